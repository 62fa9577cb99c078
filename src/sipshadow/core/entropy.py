"""The one door for randomness into the core; the primary records it, the shadow replays it."""

from typing import Protocol


class Entropy(Protocol):
    """A source of uniform draws in [0, 1)."""

    def random(self) -> float: ...
