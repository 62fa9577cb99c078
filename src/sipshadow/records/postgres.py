"""The PostgreSQL record store (psycopg 3, sync): one table, `call_records`, keyed by `record_id`.

Why sync: the store runs in the records writer thread, never on an event loop, and a batch is
one transaction; the async API would buy nothing there.

Why lazy: the database may be down when the node starts, and the node must serve calls anyway
(records wait in the journal). The store connects at its first write or read, creates the table
if absent, and keeps the connection. Any failure drops the connection and raises `StoreError`
with a one-line cause; the next call connects again. A connection that went stale while idle
(the server restarted, or an idle timeout ended it) is found out by the next write, which then
retries once on a fresh connection, so a restart between two batches costs no failed batch.

Idempotent: `INSERT ... ON CONFLICT (record_id) DO NOTHING`, the whole batch in one transaction
sent in one pipeline (`executemany`). psycopg 3.3 sums the rows each statement inserted into
`rowcount` for an `executemany` without `returning` (measured against a real server: a skipped
conflict counts 0, a record repeated within the batch counts once), so that is the count of new
records. One caveat: when a connection dies after the server committed but before its answer
arrived, the retry finds the batch stored and counts 0 for it, which is the right outcome with
the wrong tally.

Times: `to_timestamp(seconds)` on the way in, `extract(epoch from ...)::float8` on the way out.
`timestamptz` holds microseconds, so a time is kept to the microsecond nearest the float written
(the server's rounding): a time with at most 6 decimals reads back as the same float, one with
more reads back rounded to 6. `duration_s` is a `double precision` and reads back exact.
PostgreSQL text cannot hold NUL characters, nor UTF-8 a lone surrogate; a record carrying either
would fail its batch (StoreError) every time it is written, so the core never makes one
(`core.records.clean_text`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import class_row

from sipshadow.core.records import CallRecord
from sipshadow.records.store import COLUMNS, StoreError

TABLE = "call_records"
#: The columns held as `timestamptz` (UTC seconds, floats, in `CallRecord`).
TIMES = frozenset({"invited_at", "answered_at", "ended_at"})

CREATE = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    record_id text PRIMARY KEY,
    call_id text NOT NULL,
    from_tag text NOT NULL,
    to_tag text NOT NULL,
    from_uri text NOT NULL,
    to_uri text NOT NULL,
    caller text NOT NULL,
    member text NOT NULL,
    transport text NOT NULL,
    invited_at timestamptz NOT NULL,
    answered_at timestamptz NULL,
    ended_at timestamptz NOT NULL,
    status integer NOT NULL,
    ended_by text NOT NULL,
    end_reason text NOT NULL,
    duration_s double precision NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_invited_at ON {TABLE} (invited_at)",
)
INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
    f"({', '.join('to_timestamp(%s)' if name in TIMES else '%s' for name in COLUMNS)}) "
    "ON CONFLICT (record_id) DO NOTHING"
)
SELECT = (
    "SELECT "
    + ", ".join(f"extract(epoch FROM {name})::float8 AS {name}" if name in TIMES else name for name in COLUMNS)
    + f" FROM {TABLE}"
)

#: libpq settings that keep a dead or silent server from holding the writer thread for long;
#: a DSN that names one of them keeps its own value.
LIBPQ_DEFAULTS: dict[str, str | int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,  # ms: data sent and not acknowledged by then breaks the connection
    "application_name": "sipshadow-records",
}
#: A statement (a batch, a read) running longer than this is cancelled by the server: a lock
#: held elsewhere must not stall the journal forever.
STATEMENT_TIMEOUT_MS = 30_000
#: What a batch can fail with: the driver's and the server's errors, and a string that cannot be
#: sent as UTF-8 (a lone surrogate, which psycopg does not wrap).
FAILURES = (psycopg.Error, UnicodeEncodeError)


def _cause(error: BaseException) -> str:
    """An exception as one line: its type and its message with whitespace collapsed."""
    return f"{type(error).__name__}: {' '.join(str(error).split()) or 'no detail'}"


class PostgresStore:
    """A `RecordStore` on PostgreSQL. Not thread-safe: one writer thread owns it."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 2.0) -> None:
        try:
            given = conninfo_to_dict(dsn)  # parses only: a malformed DSN is a configuration error
        except psycopg.ProgrammingError as error:
            raise ValueError(f"bad PostgreSQL DSN: {_cause(error)}") from None
        params = {name: value for name, value in LIBPQ_DEFAULTS.items() if name not in given}
        # libpq counts whole seconds, at least 2 (psycopg follows it)
        params["connect_timeout"] = max(2, math.ceil(connect_timeout_s))
        self._conninfo = make_conninfo(dsn, **params)
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one with the table made sure of. Raises psycopg.Error."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            with conn.transaction():
                for statement in CREATE:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        """Forget the connection; closing it rolls back whatever transaction it had open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is gone either way
                conn.close()

    def write(self, records: list[CallRecord]) -> int:
        if not records:
            return 0
        rows = [msgspec.structs.astuple(record) for record in records]
        reused = self._conn is not None and not self._conn.closed
        try:
            return self._insert(rows)
        except FAILURES as error:
            stale = reused and self._conn is not None and self._conn.broken
            self._drop()
            if not stale:
                raise StoreError(f"PostgreSQL write of {len(rows)} records failed: {_cause(error)}") from error
        try:  # the kept connection had died while idle: one more try, on a new one
            return self._insert(rows)
        except FAILURES as error:
            self._drop()
            raise StoreError(f"PostgreSQL write of {len(rows)} records failed: {_cause(error)}") from error

    def _insert(self, rows: list[tuple[Any, ...]]) -> int:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(INSERT, rows)
            return cursor.rowcount

    def read(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        where: list[str] = []
        params: list[float] = []
        if since is not None:
            where.append("invited_at >= to_timestamp(%s)")
            params.append(since)
        if until is not None:
            where.append("invited_at < to_timestamp(%s)")
            params.append(until)
        query = SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY invited_at, record_id"
        try:
            with self._connect().cursor(row_factory=class_row(CallRecord)) as cursor:
                return cursor.execute(query, params).fetchall()
        except psycopg.Error as error:
            self._drop()
            raise StoreError(f"PostgreSQL read failed: {_cause(error)}") from error

    def close(self) -> None:
        self._drop()
