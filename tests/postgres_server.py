"""pytest fixtures around `sipshadow.lab.postgres.PostgresServer`: a real server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sipshadow.lab.postgres import PostgresServer, missing_reason


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per test module, always stopped and removed afterwards."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def clean_postgres(postgres_server: PostgresServer) -> PostgresServer:
    """The module's server, running (a test may have left it stopped) and with `call_records`
    emptied if it exists."""
    import psycopg  # here, not at import: conftest imports this module for every test

    postgres_server.start()
    with psycopg.connect(postgres_server.dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "DO $$ BEGIN IF to_regclass('call_records') IS NOT NULL THEN TRUNCATE call_records; END IF; END $$"
        )
    return postgres_server
