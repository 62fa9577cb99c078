"""Log lines an attacker or a misconfigured peer can trigger, at a bounded rate.

A wrong key once produced about 90 WARNING lines a second. Each kind of line (`key`) is logged
at most once per `every_s`; the lines held back meanwhile are counted and the next line that
goes out says how many there were, so nothing is hidden and nothing floods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sipshadow.link import ALARMS, Peering, Refused


class ThrottledLog:
    """`log(level, key, message, *args)`: at most one line per `key` per `every_s` seconds."""

    def __init__(
        self, logger: logging.Logger, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            message += f" (and {held} more like it in the last {now - last:.0f} s)" if last is not None else ""
        self.logger.log(level, message, *args)

    def refusal(self, key: str, what: str, refused: Refused, peering: Peering) -> None:
        """A frame refused on a link (`what`: where it came from): a WARNING, or an ERROR naming
        the alarm when the reason says the pair is misconfigured; rate-limited per `key` and reason."""
        alarm = peering.alarm if refused.reason in ALARMS else None
        self.log(logging.ERROR if alarm else logging.WARNING, f"{key} {refused.reason}", "%s refused (%s: %s)%s",
                 what, refused.reason, refused.detail, f": {alarm}" if alarm else "")  # fmt: skip
