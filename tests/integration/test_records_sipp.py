"""Call records of real SIPp calls through a real `sipshadow serve`: one per call, answered and
ended, in SQLite and in a real PostgreSQL, and none lost while the database is down 10 s."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.postgres import PostgresServer
from sipshadow.lab.sipp import SippUac, SippUas, free_port
from sipshadow.records.stores import open_store
from tests.conftest import FAST_PROBES, sipp_members

pytestmark = pytest.mark.sipp

#: The DB-down run: SIPp at this rate for this long, the database stopped `DOWN_AT_S` in for `DOWN_FOR_S`.
RATE, SECONDS, DOWN_AT_S, DOWN_FOR_S = 100, 20, 4.0, 10.0


@pytest.fixture
def members(tmp_path: Path) -> Iterator[list[SippUas]]:
    with sipp_members(tmp_path) as pair:
        yield pair


def node_with_records(tmp_path: Path, members: list[SippUas], store: str) -> AlgProcess:
    config = FAST_PROBES + f'[cdr]\nstore = "{store}"\njournal = "{tmp_path / "cdr.journal"}"\n'
    return AlgProcess(("127.0.0.1", free_port()), [uas.address for uas in members], tmp_path, config_text=config)


def settle(node: AlgProcess, calls: int, timeout_s: float = 20.0) -> None:
    """Until the node has made a record per call and the store has taken them all."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = node.status()
        records = status.records
        assert records is not None
        if status.counters.call_records >= calls and records.pending_bytes == 0 and \
                records.written + records.duplicates == records.submitted:  # fmt: skip
            return
        assert time.monotonic() < deadline, (status.counters.call_records, records)
        time.sleep(0.2)


def check_records(store: str, calls: int) -> None:
    records = open_store(store).read()
    assert len(records) == calls == len({record.call_id for record in records})
    assert all(r.answered_at is not None and r.status == 200 and r.end_reason == "bye" and r.ended_by == "caller"
               for r in records)  # fmt: skip
    assert all(r.invited_at <= r.answered_at <= r.ended_at for r in records)  # type: ignore[operator]
    now = time.time()
    assert all(now - 120 < r.invited_at < now for r in records), "dated in UTC, to the second"
    assert len({r.member for r in records}) == 2 and all(r.caller.startswith("127.0.0.1:") for r in records)


def test_every_sipp_call_has_one_record_in_sqlite_and_the_cli_exports_it(
    tmp_path: Path, members: list[SippUas]
) -> None:
    store = str(tmp_path / "cdr.sqlite")
    with node_with_records(tmp_path, members, store) as node:
        result = SippUac(node.listen, tmp_path, calls=300, rate=100, extra_args=["-nr"]).start().wait()
        assert result.ok and result.successful_calls == 300, result.summary()
        settle(node, 300)
    check_records(store, 300)
    exported = subprocess.run([sys.executable, "-m", "sipshadow.cli", "cdr", "export", "--config",
                               str(tmp_path / "alg.toml"), "--format", "csv"], capture_output=True, text=True,
                              check=True).stdout.splitlines()  # fmt: skip
    assert exported[0].startswith("record_id,call_id,") and len(exported) == 301
    assert exported[1].split(",")[9].endswith("Z")  # invited_at in ISO 8601 UTC


def test_every_sipp_call_has_one_record_in_postgresql(
    tmp_path: Path, members: list[SippUas], clean_postgres: PostgresServer
) -> None:
    with node_with_records(tmp_path, members, clean_postgres.dsn) as node:
        result = SippUac(node.listen, tmp_path, calls=300, rate=100, extra_args=["-nr"]).start().wait()
        assert result.ok and result.successful_calls == 300, result.summary()
        settle(node, 300)
    check_records(clean_postgres.dsn, 300)


def test_postgresql_down_10_s_under_load_loses_no_record(
    tmp_path: Path, members: list[SippUas], clean_postgres: PostgresServer
) -> None:
    calls = RATE * SECONDS
    with node_with_records(tmp_path, members, clean_postgres.dsn) as node:
        uac = SippUac(node.listen, tmp_path, calls=calls, rate=RATE, extra_args=["-nr"], timeout=SECONDS + 40)
        outage = threading.Timer(DOWN_AT_S, clean_postgres.stop)
        uac.start()
        outage.start()
        time.sleep(DOWN_AT_S + DOWN_FOR_S)
        outage.join()
        during = node.status().records
        clean_postgres.start()
        result = uac.wait()
        assert result.ok and result.successful_calls == calls, result.summary()
        settle(node, calls, timeout_s=30.0)
        after = node.status().records
    assert during is not None and during.write_failures > 0 and during.pending_bytes > 0, during
    assert after is not None and after.lost == 0 and after.corrupt == 0
    print(f"\nDB down {DOWN_FOR_S:g} s: {during.pending_bytes} journal bytes waited, {during.write_failures} failed "
          f"writes; after: {after.written} written, {after.duplicates} duplicates")  # fmt: skip
    check_records(clean_postgres.dsn, calls)
