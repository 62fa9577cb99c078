"""What `sipshadow ctl` can ask of a running node: the commands behind the control socket.

Reading commands (status, dialogs, members) work on any node; a shadow answers from its
replica. Changing ones (drain, undrain, reload) go into the core of the serving node as
events (`core.events.Control`), so the primary logs them and its shadow applies them at the
same point of the log; on a shadow they are refused with the reason (a reload there only
checks the file). `switchover` hands the service to the shadow (`HaNode.hand_off`);
`takeover` and `standby` are an external detector's orders (keepalived's notify scripts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from sipshadow.core import Gateway
from sipshadow.core.actions import Address, format_address
from sipshadow.core.dialogs import DialogState
from sipshadow.core.events import Reconfigure, SetDraining
from sipshadow.runtime.addresses import parse_address
from sipshadow.runtime.config import ConfigError, NodeConfig
from sipshadow.runtime.control import Command, CommandError
from sipshadow.runtime.ha import HandoffRefused, HaNode
from sipshadow.runtime.node import Node
from sipshadow.runtime.status import StatusDocument

log = logging.getLogger("sipshadow.control")

#: Dialogs listed at most, unless the request asks for another limit.
DIALOG_LIST_LIMIT = 100


class Operator:
    """The commands of one node: a solo `node`, or an HA node `ha` (whose serving node changes
    with its role). `load_config` reads the config file again (with the command line's flags
    over it), raising ConfigError; `reloaded` is told of each reload (systemd's notifier)."""

    def __init__(
        self, config: NodeConfig, status: Callable[[], StatusDocument], *, node: Node | None = None,
        ha: HaNode | None = None, load_config: Callable[[], NodeConfig] | None = None,
        reloading: Callable[[bool], None] | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.status = status
        self.node = node
        self.ha = ha
        self.load_config = load_config
        self.reloading = reloading

    def commands(self) -> dict[str, Command]:
        return {
            "status": self._status, "dialogs": self._dialogs, "members": self._members,
            "drain": self._drain, "undrain": self._undrain, "reload": self._reload,
            "switchover": self._switchover, "takeover": self._takeover, "standby": self._standby,
        }  # fmt: skip

    # -- where the core is ----------------------------------------------------------------

    def _serving(self) -> Node | None:
        if self.ha is None:
            return self.node
        return self.ha.serving.node if self.ha.serving is not None else None

    def _gateway(self) -> Gateway:
        """The core to read: the serving node's, or a shadow's replica."""
        node = self._serving()
        if node is not None:
            return node.gateway
        following = self.ha.following if self.ha is not None else None
        if following is not None and following.follower is not None:
            return following.follower.replica.gateway
        raise CommandError(f"this node holds no calls ({self._role()})")

    def _role(self) -> str:
        return self.ha.role if self.ha is not None else "solo"

    def _writable(self, what: str) -> Node:
        node = self._serving()
        if node is None:
            raise CommandError(f"this node is the {self._role()}: {what} on the primary (it reaches the shadow "
                               "through the replication log)")  # fmt: skip
        return node

    # -- reading --------------------------------------------------------------------------

    async def _status(self, arguments: dict[str, Any]) -> Any:
        return msgspec.to_builtins(self.status())

    async def _members(self, arguments: dict[str, Any]) -> Any:
        gateway = self._gateway()
        membership = gateway.membership
        return [
            {"member": format_address(spec.address), "transport": spec.transport, "weight": spec.weight,
             "up": gateway.health.members[index].up, "draining": membership.draining[index],
             "retired": membership.retired[index], "calls": gateway.counters.calls_per_member[index],
             "active_calls": gateway.table.active_per_member[index]}
            for index, spec in enumerate(membership.specs)
        ]  # fmt: skip

    async def _dialogs(self, arguments: dict[str, Any]) -> Any:
        """{"count": N (matching), "dialogs": [{call_id, member, caller, transport, state,
        dialogs, attempts}, ...] (at most `limit`)}; `member` filters by "HOST:PORT"."""
        gateway = self._gateway()
        wanted = None
        if arguments.get("member"):
            wanted = gateway.membership.index_of(self._address(str(arguments["member"])))
            if wanted is None:
                raise CommandError(f"{arguments['member']} is not a member")
        limit = int(arguments.get("limit", DIALOG_LIST_LIMIT))
        listed: list[dict[str, Any]] = []
        count = 0
        for call in gateway.table.calls.values():
            if wanted is not None and call.member != wanted:
                continue
            count += 1
            if len(listed) < limit:
                states = {dialog.state for dialog in call.dialogs.values()}
                order = (DialogState.CONFIRMED, DialogState.EARLY, DialogState.TERMINATED)
                state = next((s.name.lower() for s in order if s in states), "trying")
                listed.append({"call_id": call.call_id, "member": format_address(gateway.members[call.member]),
                               "caller": format_address(call.caller), "transport": call.transport, "state": state,
                               "dialogs": len(call.dialogs), "attempts": len(call.attempts)})  # fmt: skip
        return {"count": count, "dialogs": listed}

    # -- changing -------------------------------------------------------------------------

    async def _drain(self, arguments: dict[str, Any]) -> Any:
        return self._set_draining(arguments, True)

    async def _undrain(self, arguments: dict[str, Any]) -> Any:
        return self._set_draining(arguments, False)

    def _set_draining(self, arguments: dict[str, Any], draining: bool) -> str:
        verb = "drain" if draining else "undrain"
        node = self._writable(verb)
        address = self._address(str(arguments.get("member", "")))
        index = node.gateway.membership.index_of(address)
        if index is None:
            members = ", ".join(format_address(spec.address) for spec in node.gateway.membership.specs)
            raise CommandError(f"{format_address(address)} is not a member (members: {members})")
        node.control(SetDraining(address, draining, node.now()))
        active = node.gateway.table.active_per_member[index]
        log.warning("%s %s (%d active calls)", verb + "ed", format_address(address), active)
        if draining:
            return f"draining {format_address(address)}: no new calls; {active} active calls finish there"
        return f"{format_address(address)} takes new calls again"

    async def _reload(self, arguments: dict[str, Any]) -> Any:
        """Members, weights, policy and health settings from the config file; anything else
        that changed needs a restart and is named. A bad file changes nothing."""
        if self.load_config is None:
            raise CommandError("this node was started without --config: nothing to reload from")
        try:
            new = self.load_config()
        except ConfigError as error:
            raise CommandError(f"reload refused, nothing changed: {error}") from None
        restart = _restart_only_changes(self.config, new)
        node = self._serving()
        if node is None:
            return (f"the config file is valid; this node is the {self._role()}: reload the primary (its members "
                    "reach this node through the replication log)")  # fmt: skip
        if self.reloading is not None:
            self.reloading(True)
        try:
            before = node.gateway.membership.export_state()
            gateway = new.gateway
            node.control(Reconfigure(gateway.members, gateway.policy, gateway.probe_interval_s, gateway.probe_misses,
                                     node.now()))  # fmt: skip
            logging.getLogger().setLevel(new.log_level.upper())
            summary = _membership_change(before, node.gateway)
        finally:
            if self.reloading is not None:
                self.reloading(False)
        log.warning("reloaded: %s", summary)
        note = f"; needs a restart, not applied: {', '.join(restart)}" if restart else ""
        return f"reloaded: {summary}{note}"

    async def _switchover(self, arguments: dict[str, Any]) -> Any:
        if self.ha is None:
            raise CommandError("a solo node has no shadow to hand over to")
        if self.ha.replication.detector == "keepalived":
            raise CommandError(
                "keepalived owns the VIP here: move it with keepalived (stop it on this node, or lower its "
                "priority); this node hands off when keepalived makes the other MASTER"
            )
        try:
            return await self.ha.hand_off(leaving=False)
        except HandoffRefused as error:
            raise CommandError(f"switchover refused: {error}") from None

    async def _takeover(self, arguments: dict[str, Any]) -> Any:
        if self.ha is None:
            raise CommandError("a solo node takes over nothing")
        return self.ha.order_takeover(str(arguments.get("reason") or "ctl takeover"))

    async def _standby(self, arguments: dict[str, Any]) -> Any:
        if self.ha is None:
            raise CommandError("a solo node cannot stand by")
        return self.ha.order_standby(str(arguments.get("reason") or "ctl standby"))

    @staticmethod
    def _address(text: str) -> Address:
        try:
            return parse_address(text)
        except ValueError as error:
            raise CommandError(f"member {text!r}: {error}") from None


def _membership_change(before: list[tuple[str, int, int, str, bool, bool]], gateway: Gateway) -> str:
    """One line: members added, retired, back, reweighted; the policy and probe settings."""
    old = {(host, port): (weight, transport, retired) for host, port, weight, transport, _, retired in before}
    parts = []
    membership = gateway.membership
    for index, spec in enumerate(membership.specs):
        name = format_address(spec.address)
        previous = old.get(spec.address)
        if previous is None:
            parts.append(f"+{name}")
        elif membership.retired[index] and not previous[2]:
            parts.append(f"-{name} (retired: its calls finish)")
        elif not membership.retired[index] and previous[2]:
            parts.append(f"+{name} (back)")
        elif (spec.weight, spec.transport) != previous[:2]:
            parts.append(f"{name} weight {previous[0]}->{spec.weight} {spec.transport}")
    config = gateway.config
    members = ", ".join(parts) if parts else "members unchanged"
    probes = f"probes every {config.probe_interval_s:g} s, {config.probe_misses} misses"
    return f"{members}; policy {config.policy}; {probes}"


def _restart_only_changes(old: NodeConfig, new: NodeConfig) -> list[str]:
    """Keys that changed in the file but only take effect at a restart."""
    changed = []
    pairs = {
        "service.listen": (old.listen, new.listen),
        "service.advertise": (old.gateway.service, new.gateway.service),
        "dialogs": ((old.gateway.early_timeout_s, old.gateway.confirmed_timeout_s, old.gateway.terminated_linger_s),
                    (new.gateway.early_timeout_s, new.gateway.confirmed_timeout_s, new.gateway.terminated_linger_s)),
        "tcp": (old.tcp, new.tcp),
        "replication": (old.replication, new.replication),
        "status": ((old.status_file, old.status_interval_s), (new.status_file, new.status_interval_s)),
        "control.socket": (old.control_socket, new.control_socket),
        "metrics.listen": (old.metrics_listen, new.metrics_listen),
        "log.format": (old.log_format, new.log_format),
    }  # fmt: skip
    for key, (before, after) in pairs.items():
        if before != after:
            changed.append(key)
    return changed
