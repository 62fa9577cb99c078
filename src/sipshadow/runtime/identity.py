"""The service identity (the VIP) as the HA node sees it: silence it as shadow, claim it at takeover.

Forward mode on loopback needs no kernel work: the new primary just binds the address. Tap
mode on Linux delegates to `sipshadow.net` (nftables silent mode, VIP, gratuitous ARP), all
in-process so a takeover costs milliseconds, not process spawns.

Tap mode's VIP is leased, not owned: the primary puts it on its service interface with a
lifetime of `lifetime_s` seconds, and a renewal task on the event loop re-adds it every
lifetime / `RENEWALS_PER_LIFETIME` s while the node is primary (`claim` starts it, `silence`
stops it). A killed process renews nothing, so its host's kernel drops the VIP within the
lifetime and stops answering ARP for it, however long the host itself lives on.

The renewal runs on the loop on purpose: a loop that stands still lets the VIP lapse, which
fences the node from the network as the role machine fences it from its input. After a
stall longer than the lifetime the renewal does not take the VIP back by itself (the peer may
own it by now): it stops, and the VIP returns only when the role machine decides to serve on
(`resume`, at Unfence); a newer primary's beat makes the node step down instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("sipshadow.ha")

#: Renewals per lifetime: two can fail or come late before the VIP lapses.
RENEWALS_PER_LIFETIME = 3


class ServiceIdentity(Protocol):
    def silence(self) -> None:
        """Shadow: keep the VIP for receiving the tap, send nothing from it, answer no ARP."""

    def claim(self, guard_resets: bool = False) -> dict[str, float]:
        """Takeover: unsilence, own the VIP on the service interface, announce it; step timings.
        With `guard_resets`, the VIP's TCP resets stay dropped until `release_guard`."""

    def release_guard(self) -> None:
        """The TCP connections are rebuilt: the VIP may send resets again."""

    def own(self) -> dict[str, float]:
        """A node that starts as primary: `claim`, any stale copy of the VIP replaced first."""

    def resume(self) -> None:
        """A fence lifted and the node serves on: take the VIP back if it lapsed meanwhile."""


class LoopbackIdentity:
    """Forward mode: nothing to do in the kernel."""

    def silence(self) -> None:
        return None

    def claim(self, guard_resets: bool = False) -> dict[str, float]:
        return {}

    def release_guard(self) -> None:
        return None

    def own(self) -> dict[str, float]:
        return {}

    def resume(self) -> None:
        return None


class LinuxIdentity:
    """Tap mode: the VIP on `interface` with a renewed lifetime, moved and announced by `sipshadow.net`."""

    def __init__(self, interface: str, vip: str, *, lifetime_s: int | None = None, lease: bool = True) -> None:
        from sipshadow.net.vip import VIP_LIFETIME_S

        self.interface = interface
        self.vip = vip
        self.lifetime_s = VIP_LIFETIME_S if lifetime_s is None else lifetime_s
        #: False with keepalived as the detector: keepalived owns the VIP on the interface (adds
        #: it as MASTER, removes it as BACKUP, and would fight anyone else who did). This node
        #: then never adds, removes or renews it there: it keeps its copy on `lo` for the tap,
        #: and silencing or serving is the nftables rules and the announcement alone.
        self.lease = lease
        #: The takeover's later GARP bursts and tap-accept teardown, running on the loop.
        self.announcements: list[asyncio.Task[None]] = []
        #: Renews the VIP's lifetime while this node is primary (None: not primary).
        self.renewal: asyncio.Task[None] | None = None

    def silence(self) -> None:
        """VIP on lo (receive the tap, never answer ARP for it), silent-mode and accept tables."""
        import errno

        from sipshadow.net import accept, nft, silent
        from sipshadow.net.vip import RTM_NEWADDR, Rtnetlink, removals

        for finishing in self.announcements:  # a takeover stepping back must keep its tap
            finishing.cancel()
        self.announcements.clear()
        self._stop_renewal()

        for scope in ("all", self.interface):
            for setting, value in (("arp_ignore", "1"), ("arp_announce", "2")):
                with open(f"/proc/sys/net/ipv4/conf/{scope}/{setting}", "w") as knob:
                    knob.write(value)
        link = Rtnetlink()
        # a rejoining former primary still holds the VIP on its interface (unless keepalived owns it there)
        leaving = removals(self.interface, self.vip) if self.lease else []
        try:
            link.change([*leaving, (RTM_NEWADDR, "lo", self.vip, 32)],
                        ignore=frozenset({errno.EADDRNOTAVAIL, errno.ENOENT, errno.EEXIST}))  # fmt: skip
        finally:
            link.close()
        nft.run(silent.ruleset(self.interface, self.vip) + accept.accept_ruleset(self.interface, self.vip))

    def claim(self, guard_resets: bool = False) -> dict[str, float]:
        """Unsilence, VIP to the interface (with its lifetime, renewed from now on), first GARP
        burst now; later bursts on the loop, then the tap accept chain goes (frames sent to the
        old MAC meanwhile are still served). `guard_resets`: see `ServiceIdentity.claim`."""
        from sipshadow.net.vip import TAP_GRACE_S, Takeover, finish_takeover

        result = Takeover(self.interface, self.vip, lifetime_s=self.lifetime_s, guard_resets=guard_resets,
                          move_address=self.lease).run()  # fmt: skip
        loop = asyncio.get_running_loop()
        # The tap accept chain stays until the old primary's VIP lease must have lapsed: a primary
        # that was frozen, not dead, keeps the VIP (and answers ARP for it) until then, and what
        # peers send to its MAC reaches this node only as the mirror's copies.
        grace_s = max(TAP_GRACE_S, float(self.lifetime_s))
        self.announcements.append(loop.create_task(finish_takeover(result.announcement, grace_s)))
        self._stop_renewal()
        if self.lease:
            self.renewal = loop.create_task(self._renew(since=loop.time()))
        return {name: round(ms, 3) for name, ms in result.steps_ms.items()}

    def release_guard(self) -> None:
        from sipshadow.net import nft, silent

        try:
            nft.shared().run(silent.teardown_commands())
        except Exception as error:  # the guard only drops resets; serving goes on either way
            log.error("cannot remove the TCP reset guard on %s: %s", self.interface, error)

    def own(self) -> dict[str, float]:
        """First start as primary: the VIP at any other prefix length goes (a permanent copy, put
        there by hand or by a test bed, would outlive this process), then `claim`."""
        from sipshadow.net.vip import drop_other_lengths

        if self.lease:
            drop_other_lengths(self.interface, self.vip, keep=32)
        return self.claim()

    def resume(self) -> None:
        """Serving on after a fence: if the renewal gave up on a lapsed VIP, claim it again."""
        if self.renewal is not None and self.renewal.done():
            log.warning("serving on after the fence: taking the lapsed VIP %s back", self.vip)
            self.claim()

    def _stop_renewal(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
            self.renewal = None

    async def _renew(self, since: float) -> None:
        """Re-add the VIP with its lifetime every period; a failure is logged once per streak and
        retried; a loop that stood still past the lifetime ends the renewal (see the module doc)."""
        from sipshadow.net.vip import hold

        loop = asyncio.get_running_loop()
        period = self.lifetime_s / RENEWALS_PER_LIFETIME
        woke, failing = since, False
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            stood_still, woke = now - woke, now
            if stood_still >= self.lifetime_s:
                log.error(
                    "the loop stood still %.2f s, past the VIP's %d s lifetime: %s lapsed; it comes back only if "
                    "this node serves on after its fence", stood_still, self.lifetime_s, self.vip,
                )  # fmt: skip
                return
            try:
                hold(self.interface, self.vip, 32, self.lifetime_s)
            except Exception as error:  # never let the renewal die: the next period tries again
                if not failing:
                    log.error("cannot renew the VIP %s on %s (%s); retrying every %.2f s",
                              self.vip, self.interface, error, period)  # fmt: skip
                failing = True
                continue
            if failing:
                log.warning("the VIP %s on %s is renewed again", self.vip, self.interface)
                failing = False
