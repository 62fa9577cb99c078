"""A short live fuzz on the namespace bed: mutated SIP from a second client while SIPp calls run
through the pair in tap mode; no call fails, no node crashes or takes over, the shadow never
diverges (its per-entry digest check is the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipshadow.lab.live_fuzz import FuzzConfig, run_live_fuzz

pytestmark = pytest.mark.sipp


def test_mutated_sip_beside_real_calls_breaks_nothing(netns_ok: None, tmp_path: Path) -> None:
    config = FuzzConfig(seconds=15, rate=50, fuzz_rate=120, seed=7, out=tmp_path / "fuzz")
    assert run_live_fuzz(config) == 0
    summary = json.loads((config.out / "summary.json").read_text())
    assert summary["fuzz_sent"] > 1000 and summary["calls_failed"] == 0 and summary["calls_successful"] == 750
    assert summary["divergences"] == 0 and summary["crashes"] == [] and summary["takeovers"] == 0
    assert summary["primary_malformed_requests"] > 0  # the garbage did reach the primary's parser
    assert summary["shadow_entries_applied"] >= summary["fuzz_sent"]  # the shadow replayed every datagram too
    assert summary["fuzz_answers"].get("400", 0) > 0
