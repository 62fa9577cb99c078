"""Record the draws on the primary; replay exactly those on the shadow, or fail loudly.

The clock needs no wrapper: every event carries `now`, so the log entry of an event records
the time. Draws are the only other way non-determinism enters the core.
"""

from __future__ import annotations

from collections import deque

from sipshadow.core.entropy import Entropy


class ReplayMismatch(RuntimeError):
    """The shadow's core asked for a draw the primary did not make, or skipped one it made.

    So the two cores took different paths on the same event, and their states differ (a bug,
    or a state the shadow got wrong). The replica turns it into a `Divergence`, repaired by
    state transfer; it is never papered over.
    """


class RecordingEntropy:
    """Hands out the real source's draws and keeps them for the current event's log entry."""

    def __init__(self, source: Entropy) -> None:
        self.source = source
        self._draws: list[float] = []

    def random(self) -> float:
        """The source's next draw, also kept for the current event's log entry."""
        value = self.source.random()
        self._draws.append(value)
        return value

    def take(self) -> tuple[float, ...]:
        """The draws made since the last call, in order: call it after each event, and the
        result is that event's worth (the log entry's `draws`; usually empty)."""
        if not self._draws:
            return ()
        draws, self._draws = tuple(self._draws), []
        return draws


class ReplayingEntropy:
    """Hands out the draws of the log entry being applied, in order, and nothing else.

    At takeover the replica's core keeps this object; `go_live` turns it into a pass-through
    to the new primary's own (recording) source.
    """

    def __init__(self) -> None:
        self._pending: deque[float] = deque()
        self._live: Entropy | None = None

    def go_live(self, source: Entropy) -> None:
        """Takeover: drop any pending draws and pass every later draw through to `source`."""
        self._pending.clear()
        self._live = source

    def load(self, draws: tuple[float, ...] | list[float]) -> None:
        """Queue the draws of the entry about to be applied; raises `ReplayMismatch` if the
        previous entry's were not all used."""
        if self._pending:
            raise ReplayMismatch(f"{len(self._pending)} logged draws were never used")
        self._pending.extend(draws)

    def random(self) -> float:
        """The next queued draw; raises `ReplayMismatch` when none is left (after `go_live`,
        the live source's draw)."""
        if self._live is not None:
            return self._live.random()
        if not self._pending:
            raise ReplayMismatch("the core asked for a draw the primary did not make")
        return self._pending.popleft()

    def finish(self) -> None:
        """Called after the event: every logged draw must have been consumed, else
        `ReplayMismatch` (and the leftovers are dropped)."""
        if self._pending:
            left = len(self._pending)
            self._pending.clear()
            raise ReplayMismatch(f"{left} logged draws were never used")
