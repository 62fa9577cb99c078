"""The dialog table: which member holds each call, its state, and when it expires.

Keyed by Call-ID: every dialog of a call (forks included) lives on the member that took its
INVITE, which is all a load balancer must know. Expiry uses one heap with lazy deletion: a
dialog's deadline may move later without touching the heap (the stale entry re-queues itself
when it surfaces), and a dialog has at most one live entry, so memory stays O(dialogs).

The table keeps an order-independent digest of its contents (XOR of a keyed hash of every
dialog), updated on each change, so a replica can compare states after every event in O(1).
"""

from __future__ import annotations

import hashlib
import heapq
from enum import IntEnum
from typing import Any

from sipshadow.core.actions import Address


class DialogState(IntEnum):
    """RFC 3261 §12: early until a 2xx, confirmed until BYE, then terminated (kept to linger)."""

    EARLY = 0
    CONFIRMED = 1
    TERMINATED = 2


class Dialog:
    """One call's routing state; slotted and small (the table holds tens of thousands)."""

    __slots__ = ("call_id", "caller", "caller_tag", "expires_at", "heap_at", "member", "state")

    def __init__(self, call_id: str, member: int, caller: Address, caller_tag: str | None, expires_at: float) -> None:
        self.call_id = call_id
        self.member = member
        self.caller = caller
        self.caller_tag = caller_tag
        self.state = DialogState.EARLY
        self.expires_at = expires_at
        self.heap_at = expires_at


def dialog_hash(dialog: Dialog) -> int:
    """A 64-bit hash of a dialog's routing state; stable across processes (no `hash()` salt)."""
    text = (
        f"{dialog.call_id}\x1f{dialog.member}\x1f{dialog.caller[0]}\x1f{dialog.caller[1]}"
        f"\x1f{dialog.caller_tag}\x1f{dialog.state.value}\x1f{dialog.expires_at!r}"
    )
    return int.from_bytes(hashlib.blake2b(text.encode("latin-1", "replace"), digest_size=8).digest(), "little")


class DialogTable:
    """Dialogs by Call-ID, active calls per member, and their expiry timers."""

    def __init__(self, member_count: int) -> None:
        self.dialogs: dict[str, Dialog] = {}
        self.active_per_member = [0] * member_count
        self.digest = 0
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.dialogs)

    def get(self, call_id: str) -> Dialog | None:
        return self.dialogs.get(call_id)

    def open(self, call_id: str, member: int, caller: Address, caller_tag: str | None, expires_at: float) -> Dialog:
        dialog = Dialog(call_id, member, caller, caller_tag, expires_at)
        self.dialogs[call_id] = dialog
        self.digest ^= dialog_hash(dialog)
        self.active_per_member[member] += 1
        heapq.heappush(self._expiry, (expires_at, call_id))
        return dialog

    def reopen(self, dialog: Dialog, expires_at: float) -> None:
        """A terminated dialog's Call-ID starts again (an INVITE retried after 401/407)."""
        self.digest ^= dialog_hash(dialog)
        if dialog.state is DialogState.TERMINATED:
            self.active_per_member[dialog.member] += 1
        dialog.state = DialogState.EARLY
        self._move_expiry(dialog, expires_at)
        self.digest ^= dialog_hash(dialog)

    def confirm(self, dialog: Dialog, expires_at: float) -> None:
        if dialog.state is DialogState.TERMINATED:
            return
        self.digest ^= dialog_hash(dialog)
        dialog.state = DialogState.CONFIRMED
        self._move_expiry(dialog, expires_at)
        self.digest ^= dialog_hash(dialog)

    def terminate(self, dialog: Dialog, linger_until: float) -> None:
        self.digest ^= dialog_hash(dialog)
        if dialog.state is not DialogState.TERMINATED:
            dialog.state = DialogState.TERMINATED
            self.active_per_member[dialog.member] -= 1
        self._move_expiry(dialog, linger_until)
        self.digest ^= dialog_hash(dialog)

    def set_expiry(self, dialog: Dialog, expires_at: float) -> None:
        self.digest ^= dialog_hash(dialog)
        self._move_expiry(dialog, expires_at)
        self.digest ^= dialog_hash(dialog)

    def _move_expiry(self, dialog: Dialog, expires_at: float) -> None:
        dialog.expires_at = expires_at
        if expires_at < dialog.heap_at:
            dialog.heap_at = expires_at
            heapq.heappush(self._expiry, (expires_at, dialog.call_id))

    def next_deadline(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    def expire(self, now: float) -> list[Dialog]:
        """Remove and return the dialogs whose deadline has passed."""
        reaped: list[Dialog] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            at, call_id = heapq.heappop(heap)
            dialog = self.dialogs.get(call_id)
            if dialog is None or dialog.heap_at != at:
                continue
            if dialog.expires_at > now:
                dialog.heap_at = dialog.expires_at
                heapq.heappush(heap, (dialog.expires_at, call_id))
                continue
            del self.dialogs[call_id]
            self.digest ^= dialog_hash(dialog)
            if dialog.state is not DialogState.TERMINATED:
                self.active_per_member[dialog.member] -= 1
            reaped.append(dialog)
        return reaped

    # -- state transfer -------------------------------------------------------------------

    def export_state(self) -> list[tuple[Any, ...]]:
        """Every dialog as a plain tuple, in table order (a snapshot for a joining shadow)."""
        return [
            (d.call_id, d.member, d.caller[0], d.caller[1], d.caller_tag, d.state.value, d.expires_at, d.heap_at)
            for d in self.dialogs.values()
        ]

    def import_state(self, rows: list[tuple[Any, ...]], digest: int | None = None) -> None:
        """Replace the contents with `export_state()` rows; counts and heap follow.

        With the sender's `digest`, hashing every dialog again is skipped (a large table would
        stall the joining shadow); the first replayed entry's state digest checks it anyway.
        """
        self.dialogs = {}
        self.active_per_member = [0] * len(self.active_per_member)
        states = tuple(DialogState)
        for call_id, member, host, port, caller_tag, state, expires_at, heap_at in rows:
            dialog = Dialog(call_id, member, (host, port), caller_tag, expires_at)
            dialog.state = states[state]
            dialog.heap_at = heap_at
            self.dialogs[call_id] = dialog
            if state != DialogState.TERMINATED:
                self.active_per_member[member] += 1
        if digest is None:
            digest = 0
            for dialog in self.dialogs.values():
                digest ^= dialog_hash(dialog)
        self.digest = digest
        self._expiry = [(dialog.heap_at, call_id) for call_id, dialog in self.dialogs.items()]
        heapq.heapify(self._expiry)
