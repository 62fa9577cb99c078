"""The service identity (the VIP) as the HA node sees it: silence it as shadow, claim it at takeover.

Forward mode on loopback needs no kernel work: the new primary just binds the address. Tap
mode on Linux delegates to `sipshadow.net` (nftables silent mode, VIP, gratuitous ARP), all
in-process so a takeover costs milliseconds, not process spawns.
"""

from __future__ import annotations

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

    def silence(self) -> None:
        from sipshadow.net import vip as vip_ops

        vip_ops.become_shadow(self.interface, self.vip)

    def claim(self) -> dict[str, float]:
        from sipshadow.net import vip as vip_ops

        return vip_ops.takeover(self.interface, self.vip)
