"""The replaying source's failures say what went wrong, and `go_live` hands over to the real
source (found by mutation testing)."""

from __future__ import annotations

import pytest

from sipshadow.determinism import RecordingEntropy, ReplayingEntropy, ReplayMismatch, SystemEntropy


def test_after_go_live_the_draws_come_from_the_new_source_and_nothing_logged_is_left() -> None:
    """Takeover: the new primary's core draws from its own recording source from then on."""
    replaying = ReplayingEntropy()
    replaying.load((0.5, 0.25))
    assert replaying.random() == 0.5
    live = RecordingEntropy(SystemEntropy(7))
    replaying.go_live(live)
    drawn = (replaying.random(), replaying.random())
    expected = SystemEntropy(7)
    assert drawn == (expected.random(), expected.random())
    assert live.take() == drawn  # recorded for the new primary's log
    replaying.finish()  # the pending 0.25 went with go_live


def test_unused_draws_are_counted_in_the_mismatch() -> None:
    replaying = ReplayingEntropy()
    replaying.load((0.1, 0.2))
    with pytest.raises(ReplayMismatch, match=r"^2 logged draws were never used$"):
        replaying.finish()
    replaying.finish()  # the leftovers were dropped
    replaying.load((0.1, 0.2, 0.3))
    with pytest.raises(ReplayMismatch, match=r"^3 logged draws were never used$"):
        replaying.load((0.4,))


def test_a_draw_the_primary_did_not_make_is_a_mismatch() -> None:
    with pytest.raises(ReplayMismatch, match=r"^the core asked for a draw the primary did not make$"):
        ReplayingEntropy().random()


def test_a_seeded_system_source_repeats_and_stays_in_the_unit_interval() -> None:
    first, second = SystemEntropy(3), SystemEntropy(3)
    draws = [first.random() for _ in range(100)]
    assert draws == [second.random() for _ in range(100)]
    assert all(0.0 <= draw < 1.0 for draw in draws) and len(set(draws)) == 100
