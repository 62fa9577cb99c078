"""The embedded record store: one SQLite file in WAL mode, nothing to install or run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sipshadow.core.records import CallRecord
from sipshadow.records.store import COLUMNS, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS call_records (
    record_id TEXT PRIMARY KEY, call_id TEXT NOT NULL, from_tag TEXT, to_tag TEXT, from_uri TEXT,
    to_uri TEXT, caller TEXT, member TEXT, transport TEXT, invited_at REAL NOT NULL, answered_at REAL,
    ended_at REAL NOT NULL, status INTEGER, ended_by TEXT, end_reason TEXT, duration_s REAL,
    written_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE INDEX IF NOT EXISTS call_records_invited_at ON call_records (invited_at);
"""
_INSERT = (
    f"INSERT INTO call_records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (record_id) DO NOTHING"
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM call_records WHERE invited_at >= ? AND invited_at < ?" \
    " ORDER BY invited_at, record_id"  # fmt: skip


class SqliteStore:
    """`RecordStore` on a SQLite file (created with its table if absent). Times are REAL UTC
    seconds. WAL mode, so an export reads while a node writes, and the two nodes of a pair on
    one host can share the file; a writer waits up to `busy_timeout_s` for the other."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False,
                                         isolation_level=None)  # fmt: skip
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.executescript(_SCHEMA)
            except sqlite3.Error:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def write(self, records: list[CallRecord]) -> int:
        rows = [tuple(getattr(record, name) for name in COLUMNS) for record in records]
        try:
            connection = self._connect()
            before = connection.total_changes
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(_INSERT, rows)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return connection.total_changes - before
        except sqlite3.Error as error:
            self.close()
            raise StoreError(f"sqlite {self.path}: {error}") from None

    def read(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        bounds = (float("-inf") if since is None else since, float("inf") if until is None else until)
        try:
            rows = self._connect().execute(_SELECT, bounds).fetchall()
        except sqlite3.Error as error:
            self.close()
            raise StoreError(f"sqlite {self.path}: {error}") from None
        return [CallRecord(**dict(zip(COLUMNS, row, strict=True))) for row in rows]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
