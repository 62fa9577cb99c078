"""`sipshadow cdr export` and `flush`: records out of a store as CSV or JSON, and a journal
left by a stopped node into its store."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sipshadow.core.records import CallRecord
from sipshadow.records.journal import Journal
from sipshadow.records.store import COLUMNS, RecordStore
from sipshadow.records.writer import RecordWriter

FORMATS = ("csv", "json")
_TIMES = ("invited_at", "answered_at", "ended_at")


def parse_time(text: str) -> float:
    """UTC seconds from ISO 8601 ("2026-11-30T06:00:00Z", "2026-11-30"; no zone means UTC) or
    from seconds since the epoch. Raises ValueError."""
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(seconds: float | None) -> str | None:
    """UTC seconds as ISO 8601 with microseconds and a Z ("2026-11-30T06:01:26.123456Z")."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def as_row(record: CallRecord) -> dict[str, Any]:
    """A record with its times in ISO 8601 UTC, columns in `COLUMNS` order."""
    row = {name: getattr(record, name) for name in COLUMNS}
    for name in _TIMES:
        row[name] = iso(row[name])
    return row


def export(store: RecordStore, out: TextIO, *, since: float | None, until: float | None, fmt: str) -> int:
    """Write the records invited in [since, until) to `out` as CSV (a header line, then one
    line per record) or JSON (an array of objects); return how many. Raises StoreError."""
    records = store.read(since, until)
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(as_row(record) for record in records)
    else:
        json.dump([as_row(record) for record in records], out, indent=1)
        out.write("\n")
    return len(records)


def flush(store: RecordStore, journal_path: Path, timeout_s: float = 30.0) -> tuple[int, int, int]:
    """Move a journal left by a stopped node into `store`, as the node would at its next start:
    (written, duplicates, bytes left). The node must not run (one writer per journal)."""
    writer = RecordWriter(Journal(journal_path), store)
    writer.start()
    writer.stop(timeout_s)
    return writer.stats["written"], writer.stats["duplicates"], writer.pending_bytes
