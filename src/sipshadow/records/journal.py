"""The journal: records on local disk before the store has them, so none is lost.

The node appends each batch of released records here from its event loop (one `write` per
loop turn: a process that dies right after still leaves them in the kernel's page cache);
the writer thread reads them back and moves them to the store, and empties the file once the
store has everything. A store that is down just lets the journal grow; a restarted node finds
the journal and drains it. One JSON object per line (`core.records.encode_record`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

#: Read back at most this much per batch for the store.
READ_LIMIT_BYTES = 1 << 20


class Journal:
    """An append-only file of record lines; safe for one appender and one reader thread.

    `fsync`: make each append durable (`fdatasync`) before it returns, so a host that loses
    power loses no released record either; off by default (a process crash loses nothing
    without it). Raises OSError from `open` and `append` (a full disk: the caller keeps the
    lines and tries again).
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        size = os.fstat(self._fd).st_size
        #: The file may end in the middle of a line (a crash, a write cut short by a full disk):
        #: the next append starts on a line of its own, so the cut line stays one bad line.
        self._cut = bool(size) and os.pread(self._fd, 1, size - 1) != b"\n"

    def append(self, lines: list[bytes]) -> None:
        """Append `lines` (each without its newline) in one write. On OSError part of them may
        be in the file, cut: append them again (the store keeps one of each)."""
        data = memoryview((b"\n" if self._cut else b"") + b"\n".join(lines) + b"\n")
        with self._lock:
            self._cut = True
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            self._cut = False
            if self.fsync:
                os.fdatasync(self._fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, limit: int = READ_LIMIT_BYTES) -> tuple[list[bytes], int]:
        """Whole lines from byte `offset` on, about `limit` bytes of them (at least one line if
        any is complete; empty ones included), and the offset after the last one returned."""
        chunk = os.pread(self._fd, limit, offset)
        end = chunk.rfind(b"\n")
        while end < 0 and len(chunk) == limit:  # one line longer than the limit
            limit *= 2
            chunk = os.pread(self._fd, limit, offset)
            end = chunk.rfind(b"\n")
        if end < 0:
            return [], offset
        return chunk[:end].split(b"\n"), offset + end + 1

    def empty_if_read(self, offset: int) -> bool:
        """Empty the file if `offset` is its end (everything in it is in the store): True if so."""
        with self._lock:
            if os.fstat(self._fd).st_size != offset:
                return False
            os.ftruncate(self._fd, 0)
            return True

    def close(self) -> None:
        os.close(self._fd)
