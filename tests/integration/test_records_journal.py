"""Call records from the journal to a real SQLite store: idempotent, retried, never lost.

A store that fails is a real one: a SQLite file another connection holds locked."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from sipshadow.core.records import CallRecord, encode_record
from sipshadow.records.journal import Journal
from sipshadow.records.sqlite import SqliteStore
from sipshadow.records.writer import RecordWriter


def record(number: int, *, answered: bool = True) -> CallRecord:
    return CallRecord(
        record_id=f"{number:032x}", call_id=f"{number}-1@127.0.0.1", from_tag=f"f{number}", to_tag=f"t{number}",
        from_uri="sip:sipp@127.0.0.1", to_uri="sip:service@127.0.0.1", caller="127.0.0.1:5061",
        member="127.0.0.1:5080", transport="udp", invited_at=1_790_000_000.0 + number,
        answered_at=1_790_000_000.5 + number if answered else None, ended_at=1_790_000_004.5 + number,
        status=200 if answered else 486, ended_by="caller" if answered else "callee",
        end_reason="bye" if answered else "failed", duration_s=4.0 if answered else 0.0,
    )  # fmt: skip


def wait_for(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_sqlite_store_reads_back_what_it_wrote_and_skips_what_it_has(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cdr.sqlite")
    batch = [record(n, answered=n % 2 == 0) for n in range(10)]
    assert store.write(batch) == 10
    assert store.write([*batch[5:], record(10)]) == 1
    assert store.read() == sorted([*batch, record(10)], key=lambda r: (r.invited_at, r.record_id))
    assert [r.call_id for r in store.read(since=1_790_000_003.0, until=1_790_000_005.0)] == ["3-1@127.0.0.1",
                                                                                              "4-1@127.0.0.1"]
    mode = sqlite3.connect(tmp_path / "cdr.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_the_journal_returns_whole_lines_and_empties_once_read(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append([b"one", b"two"])
    lines, end = journal.read(0)
    assert lines == [b"one", b"two"] and end == 8
    journal.append([b"three"])
    assert not journal.empty_if_read(end)  # something came meanwhile
    lines, end = journal.read(end)
    assert lines == [b"three"] and journal.empty_if_read(end) and journal.size() == 0
    journal.close()
    (tmp_path / "j").write_bytes(b"whole\ncut-sho")  # a crash in the middle of a write
    reopened = Journal(tmp_path / "j")
    reopened.append([b"next"])
    assert reopened.read(0)[0] == [b"whole", b"cut-sho", b"next"]  # the cut line stays one bad line


def test_records_survive_a_locked_store_and_a_restart_and_duplicates_are_absorbed(tmp_path: Path) -> None:
    path = tmp_path / "cdr.sqlite"
    SqliteStore(path).write([record(0)])  # creates the table; record 0 is there already
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the store is down for writing
    writer = RecordWriter(Journal(tmp_path / "cdr.journal"), SqliteStore(path, busy_timeout_s=0.05))
    writer.start()
    writer.submit([encode_record(record(n)) for n in range(0, 50)])
    wait_for(lambda: writer.stats["write_failures"] >= 2)
    assert writer.stats["written"] == 0 and writer.pending_bytes > 0
    writer.stop(timeout_s=0.5)  # the node stops while the store is down: the journal keeps it all
    assert (tmp_path / "cdr.journal").stat().st_size > 0
    blocker.execute("ROLLBACK")
    blocker.close()
    restarted = RecordWriter(Journal(tmp_path / "cdr.journal"), SqliteStore(path))
    restarted.start()
    restarted.submit([encode_record(record(n)) for n in range(50, 60)])
    wait_for(lambda: restarted.stats["written"] + restarted.stats["duplicates"] == 60)
    assert restarted.stats == {**restarted.stats, "written": 59, "duplicates": 1, "corrupt": 0, "lost": 0}
    wait_for(lambda: restarted.pending_bytes == 0)
    restarted.stop()
    assert len(SqliteStore(path).read()) == 60
    assert (tmp_path / "cdr.journal").stat().st_size == 0


@pytest.mark.parametrize("count", [1, 5000])
def test_the_writer_moves_batches_of_any_size(tmp_path: Path, count: int) -> None:
    writer = RecordWriter(Journal(tmp_path / "j"), SqliteStore(tmp_path / "s.sqlite"))
    writer.start()
    for start in range(0, count, 700):
        writer.submit([encode_record(record(n)) for n in range(start, min(count, start + 700))])
    wait_for(lambda: writer.stats["written"] == count)
    writer.stop()
    assert writer.status().written == count and writer.status().pending_bytes == 0


CUT_WRITE = """
import resource, signal, sys
from pathlib import Path
from sipshadow.records.journal import Journal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
path = Path(sys.argv[1])
journal = Journal(path)
journal.append([b"a" * 100, b"b" * 100])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (250, hard))  # the disk is full past 250 bytes
try:
    journal.append([b"c" * 100, b"d" * 100])
except OSError as error:
    print("cut:", error.errno)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again: the caller appends them again
journal.append([b"c" * 100, b"d" * 100])
print(journal.read(0)[0])
"""


def test_an_append_cut_short_by_a_full_disk_loses_no_line_when_appended_again(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CUT_WRITE, str(tmp_path / "j")], capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    assert "cut: 27" in done.stdout  # EFBIG, after part of the batch went in
    lines = eval(done.stdout.splitlines()[-1])  # the journal's lines, as bytes literals
    assert lines == [b"a" * 100, b"b" * 100, b"c" * 48, b"c" * 100, b"d" * 100]  # the cut one alone on its line
