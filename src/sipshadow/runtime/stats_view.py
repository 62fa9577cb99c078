"""`sipshadow stats`: a status file as tables an operator can read at a glance."""

from __future__ import annotations

import msgspec
from rich.console import Console
from rich.table import Table

from sipshadow.runtime.sender import COUNTERS as SEND_COUNTERS
from sipshadow.runtime.status import StatusDocument


def render(document: StatusDocument) -> None:
    """Print a status file: the HA role and replication when present, then the serving node's
    members and counters (a shadow that serves nothing writes only its `ha` section)."""
    console = Console()
    for section, part in (("ha", document.ha), ("replication", document.replication)):
        if part is not None:
            table = Table(section, "value")
            for name, value in msgspec.to_builtins(part, str_keys=True).items():
                table.add_row(name, str(value))
            console.print(table)
    if document.counters is None:
        return
    console.print(
        f"sipshadow pid {document.pid} on {document.service} · policy {document.policy}"
        f" · up {document.uptime_s:.0f} s · {document.dialogs} dialogs"
    )
    members = Table("member", "up", "calls", "active", "missed probes")
    for member in document.members:
        members.add_row(
            member.address,
            "yes" if member.up else "NO",
            str(member.calls),
            str(member.active_calls),
            str(member.missed_probes),
        )
    console.print(members)
    counters = Table("counter", "value")
    for name, value in msgspec.to_builtins(document.counters, str_keys=True).items():
        if name != "calls_per_member":
            counters.add_row(name, str(value))
    for name in ("internal_errors", "send_errors", *SEND_COUNTERS):
        if (count := getattr(document, name)) is not None:
            counters.add_row(name, str(count))
    console.print(counters)
