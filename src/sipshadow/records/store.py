"""What a record store does: write a batch idempotently, read a time range back."""

from __future__ import annotations

from typing import Protocol

from sipshadow.core.records import CallRecord

#: The columns, in `CallRecord`'s order (the SQL table's and the CSV export's).
COLUMNS = tuple(CallRecord.__struct_fields__)


class StoreError(Exception):
    """The store could not take the batch (down, full, refused): nothing of it was written."""


class RecordStore(Protocol):
    def write(self, records: list[CallRecord]) -> int:
        """Write `records` in one transaction, skipping any whose `record_id` is stored already;
        return how many were new. Raises StoreError on any failure (then none was written);
        the next call tries again (reconnecting if need be)."""
        ...

    def read(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        """Records whose `invited_at` (UTC s) is in [since, until), oldest first (ties by
        record_id). Raises StoreError."""
        ...

    def close(self) -> None: ...
