"""The operator's view of a running node: counters as JSON in a file, replaced atomically.

A file is what monitoring already knows how to scrape (node_exporter's textfile collector,
a cron'd `jq`), and `sipshadow stats FILE` prints it as a table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from sipshadow.core import Gateway
from sipshadow.runtime.addresses import format_address


def snapshot(gateway: Gateway, *, started_at: float, now: float, extra: dict[str, Any]) -> dict[str, Any]:
    """Counters plus live state: dialogs held, active calls and health per member."""
    counters = gateway.counters.as_dict()
    members = [
        {
            "address": format_address(address),
            "up": health.up,
            "calls": gateway.counters.calls_per_member[index],
            "active_calls": gateway.table.active_per_member[index],
            "missed_probes": health.misses,
        }
        for index, (address, health) in enumerate(zip(gateway.members, gateway.health.members, strict=True))
    ]
    return {
        "pid": os.getpid(),
        "uptime_s": round(now - started_at, 3),
        "service": gateway.sent_by,
        "policy": gateway.config.policy,
        "dialogs": len(gateway.table),
        "members": members,
        "counters": counters,
        **extra,
    }


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(msgspec.json.format(msgspec.json.encode(document)) + b"\n")
    os.replace(temporary, path)
