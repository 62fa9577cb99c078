"""The paper's test bed, on network namespaces: client, primary, shadow, members, a switch.

Brings up the `lab.bed.testbed` namespaces and the port-mirror tap, runs SIPp callees in the
member namespaces and the two sipshadow nodes (tap input, nftables silent mode, VIP takeover
by gratuitous ARP) in theirs, and offers the faults: kill, crash (links down), partition.
Everything is torn down on `down()`, also after a failure (use it as a context manager).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

from sipshadow.lab.alg import AlgProcess, serves_as_primary
from sipshadow.lab.bed import faults, mirror
from sipshadow.lab.bed.testbed import SERVICE_IF, Testbed, Topology
from sipshadow.lab.kamailio import KamailioProcess
from sipshadow.lab.sipp import SippUac, SippUas
from sipshadow.runtime.status import TakeoverRecord

SIP_PORT = 5060
REPLICATION_PORT = 7000
ARBITER_PORT = 7001
FAULTS = ("kill", "crash", "partition")
MEMBER_KINDS = ("sipp", "kamailio")
CALLEE_PORT = 5070

NODE_CONFIG = """\
[health]
probe_interval_ms = 500
[status]
interval_s = 0.05
[replication]
role = "{role}"
mode = "{mode}"
listen = "{own}:{replication_port}"
peer = "{peer}:{replication_port}"
arbiter_listen = "{own_service}:{arbiter_port}"
arbiter_peer = "{peer_service}:{arbiter_port}"
key = "{key}"
input = "tap"
vip_interface = "{interface}"
heartbeat_interval_ms = {heartbeat_interval_ms}
heartbeat_misses = {heartbeat_misses}
[control]
socket = "{control}"
"""


class NetnsLab:
    """One test bed with its SIPp members and sipshadow nodes; `mode` is active, network or none."""

    def __init__(
        self,
        workdir: Path,
        *,
        mode: str = "active",
        topology: Topology | None = None,
        heartbeat_interval_ms: int = 10,
        heartbeat_misses: int = 4,
        members: str = "sipp",
        member_transport: str = "udp",
    ) -> None:
        if members not in MEMBER_KINDS:
            raise ValueError(f"members must be one of {', '.join(MEMBER_KINDS)}")
        if member_transport not in ("udp", "tcp") or (member_transport == "tcp" and members != "sipp"):
            raise ValueError("member_transport must be udp, or tcp with SIPp members")
        self.member_kind = members
        #: How the ALG reaches its members: "tcp" makes each SIPp member listen on TCP (-t t1).
        self.member_transport = member_transport
        self.workdir = workdir
        self.mode = mode
        self.testbed = Testbed(topology or Topology())
        self.topology = self.testbed.topology
        self.key = secrets.token_hex(16)
        self.heartbeat = (heartbeat_interval_ms, heartbeat_misses)
        self.members: list[SippUas] = []
        self.proxies: list[KamailioProcess] = []
        self.nodes: dict[str, AlgProcess] = {}

    @property
    def service(self) -> tuple[str, int]:
        return self.topology.vip, SIP_PORT

    @property
    def member_addresses(self) -> list[tuple[str, int]]:
        return [(address, SIP_PORT) for address in self.topology.member_addresses]

    @property
    def member_uris(self) -> list[tuple[str, int] | str]:
        """The members as the ALG is given them: HOST:PORT, or a SIP URI naming TCP."""
        if self.member_transport == "udp":
            return list(self.member_addresses)
        return [f"sip:{host}:{port};transport=tcp" for host, port in self.member_addresses]

    def node_config(self, host: str, role: str) -> str:
        peer = "shadow" if host == "primary" else "primary"
        return NODE_CONFIG.format(
            role=role, mode=self.mode, key=self.key, interface=SERVICE_IF,
            own=self.topology.replication_address_of(host), peer=self.topology.replication_address_of(peer),
            own_service=self.topology.address_of(host), peer_service=self.topology.address_of(peer),
            replication_port=REPLICATION_PORT, arbiter_port=ARBITER_PORT,
            heartbeat_interval_ms=self.heartbeat[0], heartbeat_misses=self.heartbeat[1],
            control=self.control_socket(host),
        )  # fmt: skip

    def control_socket(self, host: str) -> Path:
        """The node's control socket (a file: reachable from outside its namespace)."""
        return self.workdir / f"control-{host}.sock"

    def _node(self, host: str, role: str, ready: str) -> AlgProcess:
        return AlgProcess(
            self.service, self.member_uris, self.workdir / host, config_text=self.node_config(host, role),
            ready=ready, netns=self.testbed.ns_name(host),
        )  # fmt: skip

    def up(self) -> NetnsLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.testbed.up()
        mirror.install_tap(self.testbed)
        for index, member in enumerate(self.topology.members):
            self._start_member(index, member)
        self.nodes["primary"] = self._node("primary", "primary", "primary").start()
        if self.mode != "none":
            self.nodes["shadow"] = self._node("shadow", "shadow", "shadow" if self.mode == "active" else "standby")
            self.nodes["shadow"].start()
        return self

    def _start_member(self, index: int, member: str) -> None:
        """A SIPp callee, alone (it is the member) or behind a Kamailio proxy (the paper's cluster)."""
        address, netns = self.topology.address_of(member), self.testbed.ns_name(member)
        callee_port = SIP_PORT if self.member_kind == "sipp" else CALLEE_PORT
        uas = SippUas(self.workdir, name=f"member-{index + 1}", host=address, port=callee_port, netns=netns,
                      timeout=3600, transport="t1" if self.member_transport == "tcp" else "u1")  # fmt: skip
        self.members.append(uas.start())
        if self.member_kind == "kamailio":
            proxy = KamailioProcess((address, SIP_PORT), [(address, CALLEE_PORT)], self.workdir / f"proxy-{index + 1}",
                                    workers=1, shm_mb=256, netns=netns)  # fmt: skip
            proxy.start()
            self.proxies.append(proxy)

    def client_uac(
        self, calls: int, rate: float, *, call_ms: int = 0, extra: tuple[str, ...] = (), **kw: Any
    ) -> SippUac:
        """A SIPp UAC in the client namespace calling the VIP (not started)."""
        args = ["-nr", *extra] + (["-d", str(call_ms)] if call_ms else [])
        return SippUac(
            self.service, self.workdir, calls=calls, rate=rate, host=self.topology.client, local_port=SIP_PORT,
            netns=self.testbed.ns_name("client"), extra_args=args, **kw,
        )  # fmt: skip

    def fail(self, how: str) -> float:
        """Inject a fault into the primary; returns the monotonic time it happened."""
        if how == "kill":
            self.nodes["primary"].kill()
        elif how == "crash":
            faults.crash(self.testbed, "primary")
        elif how == "partition":
            faults.partition(self.testbed)
        else:
            raise ValueError(f"unknown fault {how!r}; expected one of {', '.join(FAULTS)}")
        return time.monotonic()

    def role_of(self, host: str) -> str:
        try:
            ha = self.nodes[host].status().ha
        except (OSError, ValueError):
            return "unknown"
        return ha.role if ha is not None else "unknown"

    def wait_for_takeover(self, timeout_s: float = 5.0) -> TakeoverRecord:
        deadline = time.monotonic() + timeout_s
        while self.role_of("shadow") != "primary":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the shadow did not take over within {timeout_s} s")
            time.sleep(0.01)
        ha = self.nodes["shadow"].status().ha
        assert ha is not None  # it just said it was the primary
        return ha.takeovers[-1]

    def run_in(self, host: str, *argv: str) -> str:
        return self.testbed.run(host, list(argv))

    def start_node(self, host: str, role: str = "shadow") -> AlgProcess:
        """(Re)start the node on `host`; as the shadow, it is ready once in sync."""
        self.nodes[host] = self._node(host, role, "shadow" if role == "shadow" else "primary").start()
        return self.nodes[host]

    def down(self) -> None:
        # the non-serving node first: a primary stopped while its shadow runs hands the service over
        for node in sorted(self.nodes.values(), key=serves_as_primary):
            with contextlib.suppress(Exception):
                node.stop(timeout_s=2.0)
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        for member in self.members:
            with contextlib.suppress(Exception):
                member.stop()
        self.testbed.down()

    def __enter__(self) -> NetnsLab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

