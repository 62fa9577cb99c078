"""Which store a `[cdr] store` value names: a PostgreSQL URL, else a SQLite file path."""

from __future__ import annotations

from pathlib import Path

from sipshadow.records.sqlite import SqliteStore
from sipshadow.records.store import RecordStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str) -> bool:
    return target.startswith(POSTGRES_SCHEMES)


def open_store(target: str) -> RecordStore:
    """The store `target` names; connects on first use (a store that is down at start is only
    retried). psycopg is imported only for PostgreSQL. Raises ValueError on a malformed URL."""
    if is_postgres(target):
        from sipshadow.records.postgres import PostgresStore

        return PostgresStore(target)
    return SqliteStore(Path(target))
