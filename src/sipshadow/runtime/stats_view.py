"""`sipshadow stats`: a status file as tables an operator can read at a glance."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sipshadow.runtime.sender import COUNTERS as SEND_COUNTERS


def render(document: dict[str, Any]) -> None:
    """Print a status file: the HA role and replication when present, then the serving node's
    members and counters (a shadow that serves nothing writes only its `ha` section)."""
    console = Console()
    for section in ("ha", "replication"):
        if isinstance(document.get(section), dict):
            table = Table(section, "value")
            for name, value in document[section].items():
                table.add_row(name, str(value))
            console.print(table)
    if "members" not in document:
        return
    console.print(
        f"sipshadow pid {document['pid']} on {document['service']} · policy {document['policy']}"
        f" · up {document['uptime_s']:.0f} s · {document['dialogs']} dialogs"
    )
    members = Table("member", "up", "calls", "active", "missed probes")
    for member in document["members"]:
        members.add_row(
            member["address"],
            "yes" if member["up"] else "NO",
            str(member["calls"]),
            str(member["active_calls"]),
            str(member["missed_probes"]),
        )
    console.print(members)
    counters = Table("counter", "value")
    for name, value in document["counters"].items():
        if name != "calls_per_member":
            counters.add_row(name, str(value))
    for name in ("internal_errors", "send_errors", *SEND_COUNTERS):
        if name in document:
            counters.add_row(name, str(document[name]))
    console.print(counters)
