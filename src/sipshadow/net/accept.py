"""The shadow's side of the tap: its kernel takes the copies of frames sent to the primary.

The copies still carry the primary's MAC, so the kernel sees them as `otherhost` and drops
them; an nftables `netdev` ingress chain on the service interface re-marks those addressed to
the VIP as `host`. With the VIP on `lo` (/32, arp_ignore=1, arp_announce=2) the shadow never
claims the VIP by ARP. This is what production runs on the shadow, whatever copies the frames
(a switch's SPAN session, or the test bed's `lab.bed.mirror`).
"""

from __future__ import annotations

import ipaddress

from sipshadow.net import nft

ACCEPT_TABLE = "sipshadow_tap"
ACCEPT_CHAIN = "tap_in"  # "accept" is an nft keyword
ARP_SYSCTLS = ("arp_ignore=1", "arp_announce=2")


def accept_ruleset(ifname: str, vip: str) -> str:
    """The shadow's ingress chain: copies addressed to the VIP but to another MAC become `host` packets."""
    ipaddress.IPv4Address(vip)
    rules = [f"ip daddr {vip} meta pkttype other counter meta pkttype set host"]
    return nft.netdev_table(ACCEPT_TABLE, ACCEPT_CHAIN, "ingress", ifname, -500, rules)


def accept_teardown_commands() -> str:
    """Remove the accept chain's table whether or not it exists."""
    return nft.drop_table("netdev", ACCEPT_TABLE)
