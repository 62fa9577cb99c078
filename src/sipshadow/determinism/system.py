"""The real sources, used by a solo node (the primary will wrap them in a recorder)."""

from __future__ import annotations

import random


class SystemEntropy:
    """Uniform draws in [0.0, 1.0) from a private PRNG, seeded by the OS unless `seed` is given
    (tests). Never raises."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def random(self) -> float:
        return self._random.random()
