"""The test bed's tap: the shadow gets a copy of every frame sent to the primary, and its kernel accepts them.

Switch side (the test bed's SPAN port, what a real switch's mirror session does): at the INGRESS
of every client- and member-facing bridge port, a `tc u32` filter matching destination MAC == the
primary's MAC mirrors the frame to the bridge port toward the shadow. Mirroring at ingress keeps
working when the primary's link is dead. The primary's MAC is pinned with a static fdb entry so
the bridge never floods frames for it (flooding would hand the shadow a second copy).

Shadow side: production's `net.accept` (the VIP on `lo` with arp_ignore=1 / arp_announce=2, and
the `netdev` ingress chain re-marking the copies as `host`), put in place from outside the
shadow's namespace. A shadow node in tap mode installs the same itself when it silences.
"""

from __future__ import annotations

from sipshadow.lab.bed.testbed import SWITCH, Testbed, run_checked
from sipshadow.net import nft
from sipshadow.net.accept import ARP_SYSCTLS, accept_ruleset

TC_PRIO = 1


def tapped_hosts(tb: Testbed) -> tuple[str, ...]:
    """Hosts whose frames toward the primary are mirrored: the client and the members."""
    return tuple(host for host in tb.topology.hosts if host not in ("primary", "shadow"))


def tc_filter_line(port: str, primary_mac: str, shadow_port: str) -> str:
    """The `tc` filter (batch syntax): at port's ingress, mirror frames for primary_mac to shadow_port.

    `match ether dst` makes u32 compare at negative offsets (`u16 0x0200 at -16` masked to the low
    half and `u32 ... at -12`): at ingress the data pointer sits at the network header.
    """
    return (
        f"filter add dev {port} parent ffff: protocol all prio {TC_PRIO} u32 match ether dst {primary_mac}"
        f" action mirred egress mirror dev {shadow_port}"
    )


def install_tap(tb: Testbed) -> None:
    """Mirror client/member frames for the primary to the shadow's port; pin the primary's MAC."""
    ns = tb.ns_name(SWITCH)
    mac = tb.mac_of("primary")
    lines: list[str] = []
    for host in tapped_hosts(tb):
        port = tb.switch_port(host)
        lines += [f"qdisc add dev {port} ingress", tc_filter_line(port, mac, tb.switch_port("shadow"))]
    run_checked(["tc", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")
    run_checked(["bridge", "-n", ns, "fdb", "replace", mac, "dev", tb.switch_port("primary"), "master", "static"])


def install_accept(tb: Testbed, host: str = "shadow") -> None:
    """VIP on lo, ARP sysctls, and the ingress accept chain, in host's namespace."""
    ifname = tb.service_if(host)
    vip = tb.topology.vip
    keys = [f"net.ipv4.conf.{scope}.{setting}" for scope in ("all", ifname) for setting in ARP_SYSCTLS]
    tb.run(host, ["sysctl", "-q", "-w", *keys])
    tb.ip(host, "addr", "replace", f"{vip}/32", "dev", "lo")
    nft.apply(accept_ruleset(ifname, vip), tb.ns_name(host))


def install(tb: Testbed) -> None:
    """The whole tap: switch mirror and shadow accept side."""
    install_accept(tb)
    install_tap(tb)
