"""The record writer: released records into the journal at once, into the store off the loop.

`submit` runs on the event loop with the records output commit released: it appends them to
the journal (one write) and wakes the writer thread, which moves journal lines into the store
in batches, idempotently (a takeover's re-issued record is absorbed as a duplicate). A store
that fails (down, full, refusing) is retried with a growing pause; meanwhile the journal
holds everything, and a node restarted later drains it first. A journal that cannot be
written (disk full) keeps the lines in memory, up to `MEMORY_LIMIT`, and tries again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

import msgspec

from sipshadow.core.records import CallRecord, decode_record
from sipshadow.detect.throttle import ThrottledLog
from sipshadow.records.journal import Journal
from sipshadow.records.store import RecordStore, StoreError
from sipshadow.records.stores import open_store

log = logging.getLogger("sipshadow.records")

#: Records held in memory while the journal cannot be written; past this, new ones are lost
#: (counted, and said in the log).
MEMORY_LIMIT = 100_000
#: The pause after a failed store write grows from RETRY_MIN_S, doubling, to RETRY_MAX_S.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
#: Records per store transaction, at most.
BATCH = 2000
#: Once woken, the writer waits this long (s) for more records before it writes: one
#: transaction per tenth of a second instead of one per loop turn, at any rate.
LINGER_S = 0.1


def open_writer(store: str, journal: Path, *, fsync: bool = False) -> RecordWriter:
    """The writer of `[cdr]` (not started): `store` a SQLite path or PostgreSQL URL, `journal`
    the local file. OSError when the journal cannot be opened, ValueError on a malformed URL."""
    return RecordWriter(Journal(journal, fsync=fsync), open_store(store))


class RecordsStatus(msgspec.Struct, kw_only=True):
    """Call records on their way to the store (`records.writer`), since the node started."""

    submitted: int = 0  #: records released to the journal
    written: int = 0  #: new in the store
    duplicates: int = 0  #: already in the store (a takeover's re-issue, a journal replayed)
    write_failures: int = 0  #: store transactions that failed (retried)
    journal_errors: int = 0  #: journal appends that failed (records held in memory)
    corrupt: int = 0  #: journal lines that did not decode (cut short by a crash)
    lost: int = 0  #: records dropped: the journal unwritable and the memory bound reached
    pending_bytes: int = 0  #: journal bytes the store has not taken yet
    held_in_memory: int = 0  #: records waiting for the journal to take writes again
    last_error: str = ""  #: the store's last failure, one line




class RecordWriter:
    """Journal then store, for one node. `stats` (ints) are read by the status document."""

    def __init__(self, journal: Journal, store: RecordStore) -> None:
        self.journal = journal
        self.store = store
        self.stats: dict[str, int] = dict.fromkeys(
            ("submitted", "written", "duplicates", "write_failures", "journal_errors", "corrupt", "lost"), 0
        )
        self.last_error = ""
        self._unjournaled: deque[bytes] = deque()
        self._offset = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sipshadow-records", daemon=True)
        self._said = ThrottledLog(log, every_s=10.0)
        self._pending_at_stop: int | None = None

    def start(self) -> None:
        """Start the thread; a journal left by an earlier run is drained first."""
        if self.journal.size():
            log.info("call records: %d bytes left in the journal %s; writing them to the store",
                     self.journal.size(), self.journal.path)  # fmt: skip
        self._thread.start()

    def submit(self, lines: list[bytes]) -> None:
        """Released records (`encode_record` bytes), from the event loop; never raises."""
        self.stats["submitted"] += len(lines)
        if self._unjournaled:
            lines = [*self._unjournaled, *lines]
            self._unjournaled.clear()
        try:
            self.journal.append(lines)
        except OSError as error:
            self.stats["journal_errors"] += 1
            room = MEMORY_LIMIT - len(self._unjournaled)
            self._unjournaled.extend(lines[:room])
            if len(lines) > room:
                self.stats["lost"] += len(lines) - room
                log.error("call records: journal %s unwritable and %d records in memory: %d lost",
                          self.journal.path, MEMORY_LIMIT, len(lines) - room)  # fmt: skip
            self._said.log(logging.WARNING, "journal", "call records: cannot write the journal %s (%s): %d held in"
                           " memory", self.journal.path, error, len(self._unjournaled))  # fmt: skip
            return
        self._wake.set()

    @property
    def pending_bytes(self) -> int:
        """Journal bytes not yet known to be in the store."""
        if self._pending_at_stop is not None:
            return self._pending_at_stop
        return max(0, self.journal.size() - self._offset)

    def status(self) -> RecordsStatus:
        return RecordsStatus(**self.stats, pending_bytes=self.pending_bytes, held_in_memory=len(self._unjournaled),
                             last_error=self.last_error)  # fmt: skip

    def stop(self, timeout_s: float = 2.0) -> None:
        """Write what is journaled if the store takes it within `timeout_s`, then stop (what is
        left stays in the journal for the next start)."""
        if self._unjournaled:  # held since the journal failed: one more try to put them on disk
            self.submit([])
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("call records: the store did not take the journal in %.1f s; it stays in %s", timeout_s,
                        self.journal.path)  # fmt: skip
            return
        self._pending_at_stop = self.pending_bytes
        self.store.close()
        self.journal.close()

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._stop.wait(LINGER_S)  # gather a batch (a stop cuts it short)
            self._wake.clear()
            pause = RETRY_MIN_S
            while not self._drain():  # new records do not cut a pause short; a stop does
                if self._stopping:
                    return
                self._stop.wait(pause)
                pause = min(RETRY_MAX_S, pause * 2)
            if self._stopping:
                return

    def _drain(self) -> bool:
        """Move every journaled line into the store; False when the store failed."""
        while True:
            lines, end = self.journal.read(self._offset)
            if not lines:
                if self.journal.empty_if_read(self._offset):
                    self._offset = 0
                return True
            for start in range(0, len(lines), BATCH):
                batch = lines[start : start + BATCH]
                records = self._decoded(batch)
                try:
                    new = self.store.write(records) if records else 0
                except StoreError as error:
                    self.stats["write_failures"] += 1
                    self.last_error = str(error)
                    self._said.log(logging.WARNING, "store", "call records: store write failed (%s); kept in the"
                                   " journal, retrying", error)  # fmt: skip
                    return False
                self.stats["written"] += new
                self.stats["duplicates"] += len(records) - new
                self._offset += sum(len(line) + 1 for line in batch)  # past this batch: not written twice
            self._offset = end  # where the batches above took it

    def _decoded(self, lines: list[bytes]) -> list[CallRecord]:
        records = []
        for line in lines:
            if not line:
                continue
            try:
                records.append(decode_record(line))
            except (msgspec.DecodeError, ValueError):
                self.stats["corrupt"] += 1  # a line a crash cut short: its record is re-issued or was written
        return records
