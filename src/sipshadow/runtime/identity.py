"""The service identity (the VIP) as the HA node sees it: silence it as shadow, claim it at takeover.

Forward mode on loopback needs no kernel work: the new primary just binds the address. Tap
mode on Linux delegates to `sipshadow.net` (nftables silent mode, VIP, gratuitous ARP), all
in-process so a takeover costs milliseconds, not process spawns.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class ServiceIdentity(Protocol):
    def silence(self) -> None:
        """Shadow: keep the VIP for receiving the tap, send nothing from it, answer no ARP."""

    def claim(self) -> dict[str, float]:
        """Takeover: unsilence, own the VIP on the service interface, announce it; step timings."""


class LoopbackIdentity:
    """Forward mode: nothing to do in the kernel."""

    def silence(self) -> None:
        return None

    def claim(self) -> dict[str, float]:
        return {}


class LinuxIdentity:
    """Tap mode: the VIP on `interface`, moved and announced by `sipshadow.net`."""

    def __init__(self, interface: str, vip: str) -> None:
        self.interface = interface
        self.vip = vip
        #: The takeover's later GARP bursts and tap-accept teardown, running on the loop.
        self.announcements: list[asyncio.Task[None]] = []

    def silence(self) -> None:
        """VIP on lo (receive the tap, never answer ARP for it), silent-mode and accept tables."""
        import errno

        from sipshadow.net import accept, nft, silent
        from sipshadow.net.vip import RTM_DELADDR, RTM_NEWADDR, Rtnetlink

        for finishing in self.announcements:  # a takeover stepping back must keep its tap
            finishing.cancel()
        self.announcements.clear()

        for scope in ("all", self.interface):
            for setting, value in (("arp_ignore", "1"), ("arp_announce", "2")):
                with open(f"/proc/sys/net/ipv4/conf/{scope}/{setting}", "w") as knob:
                    knob.write(value)
        link = Rtnetlink()
        try:  # a rejoining former primary still holds the VIP on its interface
            removals = [(RTM_DELADDR, self.interface, self.vip, length) for length in range(32, 7, -1)]
            link.change([*removals, (RTM_NEWADDR, "lo", self.vip, 32)],
                        ignore=frozenset({errno.EADDRNOTAVAIL, errno.ENOENT, errno.EEXIST}))  # fmt: skip
        finally:
            link.close()
        nft.run(silent.ruleset(self.interface, self.vip) + accept.accept_ruleset(self.interface, self.vip))

    def claim(self) -> dict[str, float]:
        """Unsilence, VIP to the interface, first GARP burst now; later bursts on the loop, then
        the tap accept chain goes (frames sent to the old MAC meanwhile are still served)."""
        from sipshadow.net.vip import Takeover, finish_takeover

        result = Takeover(self.interface, self.vip).run()
        self.announcements.append(asyncio.get_running_loop().create_task(finish_takeover(result.announcement)))
        return {name: round(ms, 3) for name, ms in result.steps_ms.items()}
