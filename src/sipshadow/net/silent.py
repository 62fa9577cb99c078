"""Silent mode: the shadow's VIP-sourced frames die at its interface's egress while its sends still succeed.

An nftables `netdev` table hooked at EGRESS of the service interface drops every IPv4 packet whose
source is the VIP and every ARP packet whose sender IP is the VIP. The application sees no error
(the drop happens below the socket layer), and traffic from the shadow's own addresses or on the
replication link is untouched. Setting up may fork `nft -f -`; leaving silent mode for a takeover
goes through libnftables in-process (`disable()` with no namespace, or `teardown_commands()`).
"""

from __future__ import annotations

import ipaddress

from sipshadow.net import nft

TABLE = "sipshadow_silent"
CHAIN = "egress"


def _check(ifname: str, vip: str) -> None:
    ipaddress.IPv4Address(vip)
    if not ifname or len(ifname) > 15 or '"' in ifname or any(c.isspace() for c in ifname):
        raise ValueError(f"bad interface name {ifname!r}")


def ruleset(ifname: str, vip: str) -> str:
    """The silent-mode table (replaces any previous one in the same transaction)."""
    _check(ifname, vip)
    rules = [f"ip saddr {vip} counter drop", f"arp saddr ip {vip} counter drop"]
    return nft.netdev_table(TABLE, CHAIN, "egress", ifname, 0, rules)


def reset_guard(ifname: str, vip: str) -> str:
    """Replace silent mode with a guard that drops only the VIP's TCP resets (a takeover serves
    at once while it rebuilds the old primary's TCP connections: a segment of one not yet
    rebuilt must not be answered with a reset; its peer sends it again). `teardown_commands`
    removes it."""
    _check(ifname, vip)
    return nft.netdev_table(TABLE, CHAIN, "egress", ifname, 0, [f"ip saddr {vip} tcp flags rst counter drop"])


def teardown_commands() -> str:
    """Commands that leave silent mode: remove the table, whether or not it exists."""
    return nft.drop_table("netdev", TABLE)


def enable(ifname: str, vip: str, *, netns: str | None = None) -> None:
    """Enter silent mode on ifname (in netns via `nft -f -`, else in-process)."""
    nft.apply(ruleset(ifname, vip), netns)


def disable(*, netns: str | None = None) -> None:
    """Leave silent mode; in-process (libnftables) unless a netns is named."""
    nft.apply(teardown_commands(), netns)


def is_enabled(*, netns: str | None = None) -> bool:
    """Whether the silent-mode table exists."""
    return f"table netdev {TABLE}" in nft.list_tables(netns)
