"""The test bed's tap: each node of the pair gets a copy of every frame sent to the other, and a
silent (shadow) node's kernel accepts them.

Switch side (the test bed's SPAN port, what a real switch's mirror session does): at the INGRESS
of every client- and member-facing bridge port, a `tc u32` filter matching destination MAC == the
primary's MAC mirrors the frame to the bridge port toward the shadow, and one matching the
shadow's MAC mirrors to the primary's port. Both ways, so whichever node serves (after a
takeover or a planned switchover), the other one has the copies: nothing to re-point. A serving
node's kernel drops the copies (they are not for its MAC, and only a silenced node re-marks
them). Mirroring at ingress keeps working when a node's link is dead. Both MACs are pinned
with static fdb entries so the bridge never floods frames for them (flooding would hand the
other node a second copy).

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
    """Mirror client/member frames for either node to the other's port; pin both MACs."""
    ns = tb.ns_name(SWITCH)
    lines: list[str] = []
    for host in tapped_hosts(tb):
        port = tb.switch_port(host)
        lines += [
            f"qdisc add dev {port} ingress",
            tc_filter_line(port, tb.mac_of("primary"), tb.switch_port("shadow")),
            tc_filter_line(port, tb.mac_of("shadow"), tb.switch_port("primary")),
        ]
    run_checked(["tc", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")
    for node in ("primary", "shadow"):
        run_checked(["bridge", "-n", ns, "fdb", "replace", tb.mac_of(node), "dev", tb.switch_port(node), "master",
                     "static"])  # fmt: skip


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
