"""Silent mode: the shadow's VIP-sourced frames die at its interface's egress while its sends still succeed.

An nftables `netdev` table hooked at EGRESS of the service interface drops every IPv4 packet whose
source is the VIP and every ARP packet whose sender IP is the VIP. The application sees no error
(the drop happens below the socket layer), and traffic from the shadow's own addresses or on the
replication link is untouched. Setting up may fork `nft -f -`; leaving silent mode for a takeover
goes through libnftables in-process (`disable()` with no namespace, or `teardown_commands()`).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence

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
    return (
        f"add table netdev {TABLE}\n"
        f"delete table netdev {TABLE}\n"
        f"table netdev {TABLE} {{\n"
        f"  chain {CHAIN} {{\n"
        f'    type filter hook egress device "{ifname}" priority 0; policy accept;\n'
        f"    ip saddr {vip} counter drop\n"
        f"    arp saddr ip {vip} counter drop\n"
        f"  }}\n"
        f"}}\n"
    )


def teardown_commands() -> str:
    """Commands that remove the table, whether or not it exists (nft 1.0.6 has no `destroy`)."""
    return f"add table netdev {TABLE}\ndelete table netdev {TABLE}\n"


def nft_argv(netns: str | None) -> list[str]:
    """`nft -f -`, run inside netns when one is named."""
    argv = ["nft", "-f", "-"]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def apply(commands: str, netns: str | None) -> None:
    """Feed commands to `nft -f -` (in netns) or, with no netns, to libnftables in this process."""
    if netns is None:
        nft.run(commands)
        return
    proc = subprocess.run(nft_argv(netns), input=commands, capture_output=True, text=True, check=False, timeout=20)
    if proc.returncode != 0:
        raise nft.NftError(commands, proc.returncode, proc.stderr)


def enable(ifname: str, vip: str, *, netns: str | None = None) -> None:
    """Enter silent mode on ifname (in netns via `nft -f -`, else in-process)."""
    apply(ruleset(ifname, vip), netns)


def disable(*, netns: str | None = None) -> None:
    """Leave silent mode; in-process (libnftables) unless a netns is named."""
    apply(teardown_commands(), netns)


def is_enabled(*, netns: str | None = None) -> bool:
    """Whether the silent-mode table exists."""
    listing = list_tables(netns)
    return f"table netdev {TABLE}" in listing


def list_tables(netns: str | None) -> str:
    if netns is None:
        return nft.run("list tables")
    argv: Sequence[str] = ["ip", "netns", "exec", netns, "nft", "list", "tables"]
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=20).stdout
