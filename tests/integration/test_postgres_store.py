"""The PostgreSQL record store against a real server: equality, idempotency, ranges, and what a
write does while the server is down and once it is back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import psycopg
import pytest

from sipshadow.core.records import BYE, CALLEE, CALLER, EXPIRED, FAILED, GATEWAY, CallRecord, record_id
from sipshadow.lab.postgres import PostgresServer
from sipshadow.lab.sipp import free_port
from sipshadow.records.postgres import PostgresStore
from sipshadow.records.store import StoreError

#: A UTC time with 6 decimals: timestamptz keeps microseconds, so these read back equal.
T0 = 1_767_225_600.123456
CONNECT_TIMEOUT_S = 2.0


def make_record(index: int, *, answered: bool = True, t0: float = T0) -> CallRecord:
    invited = round(t0 + index * 1.5, 6)
    answered_at = round(invited + 0.250001, 6) if answered else None
    ended = round(invited + 30.000007, 6)
    return CallRecord(
        record_id=record_id(f"call-{index}@caller", f"ft{index}", f"tt{index}" if answered else "", 1, f"b{index}"),
        call_id=f"call-{index}@caller",
        from_tag=f"ft{index}",
        to_tag=f"tt{index}" if answered else "",
        from_uri=f"sip:alice{index}@example.com",
        to_uri="sip:bób@example.com",  # non-ASCII: the SIP parser decodes latin-1
        caller="127.0.0.1:5070",
        member=f"127.0.0.1:{5080 + index % 2}",
        transport="udp" if index % 2 else "tcp",
        invited_at=invited,
        answered_at=answered_at,
        ended_at=ended,
        status=200 if answered else 486,
        ended_by=(CALLER, CALLEE, GATEWAY)[index % 3] if answered else CALLEE,
        end_reason=BYE if answered else FAILED,
        duration_s=ended - answered_at if answered_at is not None else 0.0,
    )


def msgspec_replace(record: CallRecord, **changes: object) -> CallRecord:
    return msgspec.structs.replace(record, **changes)


def batch(count: int, start: int = 0) -> list[CallRecord]:
    return [make_record(index, answered=index % 4 != 3) for index in range(start, start + count)]


def rows_in_table(server: PostgresServer) -> int:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM call_records").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def store(clean_postgres: PostgresServer) -> Iterator[PostgresStore]:
    store = PostgresStore(clean_postgres.dsn, connect_timeout_s=CONNECT_TIMEOUT_S)
    yield store
    store.close()


def test_a_written_batch_reads_back_equal(store: PostgresStore) -> None:
    records = batch(12)
    assert store.write(records) == 12
    assert store.read() == records  # already in (invited_at, record_id) order


def test_unanswered_records_keep_answered_at_none(store: PostgresStore) -> None:
    unanswered = make_record(7, answered=False)
    assert unanswered.answered_at is None
    store.write([unanswered, make_record(8)])
    back = {record.record_id: record for record in store.read()}
    assert back[unanswered.record_id] == unanswered
    assert back[unanswered.record_id].answered_at is None


def test_times_with_more_than_6_decimals_read_back_to_the_microsecond(store: PostgresStore) -> None:
    record = make_record(0)
    fine = msgspec_replace(record, invited_at=T0 + 0.0000004, ended_at=T0 + 60.0000006, duration_s=1 / 3)
    store.write([fine])
    (back,) = store.read()
    assert back.invited_at == T0  # the nearest microsecond
    assert back.ended_at == round(T0 + 60.000001, 6)
    assert back.duration_s == 1 / 3  # double precision: exact


def test_writing_a_batch_twice_stores_it_once(store: PostgresStore, clean_postgres: PostgresServer) -> None:
    records = batch(20)
    assert store.write(records) == 20
    assert store.write(records) == 0
    assert rows_in_table(clean_postgres) == 20
    assert store.read() == records


def test_a_batch_overlapping_the_stored_ones_counts_only_the_new(
    store: PostgresStore, clean_postgres: PostgresServer
) -> None:
    records = batch(10)
    assert store.write(records[:4]) == 4
    assert store.write(records[2:7]) == 3  # 2, 3 stored already; 4, 5, 6 new
    assert store.write([records[8], records[8], records[9]]) == 2  # a repeat within a batch counts once
    assert store.write(records) == 1  # only 7 left
    assert rows_in_table(clean_postgres) == 10
    assert store.read() == records


def test_read_filters_on_invited_at_half_open(store: PostgresStore) -> None:
    records = batch(10)  # invited 1.5 s apart
    store.write(list(reversed(records)))
    times = [record.invited_at for record in records]
    assert store.read(since=times[3]) == records[3:]  # since is inclusive
    assert store.read(until=times[3]) == records[:3]  # until is exclusive
    assert store.read(since=times[2], until=times[5]) == records[2:5]
    assert store.read(since=times[2] + 0.000001, until=times[5] + 0.000001) == records[3:6]
    assert store.read(since=times[-1] + 1) == []
    assert store.read(None, None) == records


def test_ties_on_invited_at_are_ordered_by_record_id(store: PostgresStore) -> None:
    records = [msgspec_replace(make_record(index), invited_at=T0) for index in range(6)]
    store.write(records)
    assert store.read() == sorted(records, key=lambda record: record.record_id)


@pytest.mark.parametrize(("call_id", "cause"), [("nul\x00inside", "NUL"), ("lone\udcffsurrogate", "surrogate")])
def test_a_failing_batch_writes_none_of_its_records(
    store: PostgresStore, clean_postgres: PostgresServer, call_id: str, cause: str
) -> None:
    records = batch(5)
    assert store.write(records[:1]) == 1  # a batch on a kept connection
    poisoned = [*records[1:3], msgspec_replace(records[3], call_id=call_id), records[4]]
    with pytest.raises(StoreError, match=cause):
        store.write(poisoned)
    assert rows_in_table(clean_postgres) == 1
    assert store.write(records) == 4  # and the store goes on


def test_the_store_connects_lazily_and_fails_fast_when_nothing_listens() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(StoreError, match="refused") as raised:
        store.write(batch(1))
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 1
    assert "\n" not in str(raised.value)
    with pytest.raises(StoreError):
        store.read()
    store.close()


def test_a_stopped_server_fails_writes_fast_and_a_restarted_one_takes_them(
    store: PostgresStore, clean_postgres: PostgresServer
) -> None:
    assert store.write(batch(5)) == 5  # the store now holds a connection
    clean_postgres.stop()
    try:
        for attempt in range(2):  # on the dead connection, then on a refused new one
            started = time.monotonic()
            with pytest.raises(StoreError) as raised:
                store.write(batch(5, start=5))
            elapsed = time.monotonic() - started
            assert elapsed < CONNECT_TIMEOUT_S + 1, (attempt, elapsed)
            assert "\n" not in str(raised.value)
        with pytest.raises(StoreError):
            store.read()
    finally:
        clean_postgres.start()
    assert store.write(batch(5, start=5)) == 5  # the same store object reconnects
    assert store.read() == batch(10)


def test_a_restart_between_batches_costs_no_failed_batch(store: PostgresStore, clean_postgres: PostgresServer) -> None:
    assert store.write(batch(3)) == 3
    clean_postgres.restart()  # the store's connection is dead, the server is up again
    assert store.write(batch(3, start=3)) == 3
    assert store.read() == batch(6)


def test_the_table_is_created_by_the_first_write(store: PostgresStore, clean_postgres: PostgresServer) -> None:
    with psycopg.connect(clean_postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS call_records")
    fresh = PostgresStore(clean_postgres.dsn)
    try:
        assert fresh.read() == []
        assert fresh.write(batch(2)) == 2
    finally:
        fresh.close()
    with psycopg.connect(clean_postgres.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT written_at <= now() FROM call_records LIMIT 1").fetchone()
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'call_records'").fetchall()
    assert row == (True,)
    assert any("(invited_at)" in index for (index,) in indexes)


def test_expired_records_round_trip(store: PostgresStore) -> None:
    record = msgspec_replace(make_record(1, answered=False), status=408, end_reason=EXPIRED, ended_by=GATEWAY)
    store.write([record])
    assert store.read() == [record]
