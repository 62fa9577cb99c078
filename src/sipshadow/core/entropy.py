"""The one door for randomness into the core; the primary records it, the shadow replays it."""

from typing import Protocol


class Entropy(Protocol):
    """A source of draws: each `random()` call is one draw, a float uniform in [0.0, 1.0).

    The core draws only while handling an event (today only the weighted-random policy, once
    per new Call-ID), so each draw belongs to that event's log entry. Implementations:
    `determinism.SystemEntropy` (solo), `RecordingEntropy` (primary), `ReplayingEntropy`
    (shadow, which raises `ReplayMismatch` when the core's draws differ from the log's).
    """

    def random(self) -> float: ...
