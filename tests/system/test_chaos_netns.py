"""A short chaos run on the namespace bed: one fault of each kind, each healed, under SIPp with
no retransmissions; no call fails, no takeover is false, the shadow never diverges."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sipshadow.lab.chaos import FAULT_KINDS, ChaosConfig, run_chaos

pytestmark = pytest.mark.sipp


def test_every_fault_kind_once_loses_no_call(netns_ok: None, tmp_path: Path) -> None:
    config = ChaosConfig(minutes=1.6, rate=50, gap_s=(8.0, 10.0), seed=3, out=tmp_path / "chaos")
    assert run_chaos(config) == 0
    summary = json.loads((config.out / "summary.json").read_text())
    with (config.out / "timeline.csv").open() as handle:
        steps = list(csv.DictReader(handle))
    assert {step["kind"] for step in steps} == set(FAULT_KINDS), steps
    assert summary["calls_failed"] == 0 and summary["false_takeovers"] == 0 and summary["divergences"] == 0
    for step in steps:
        assert (step["takeover"] == "True") == (step["kind"] in ("kill", "crash", "freeze")), step
    assert (config.out / "chaos.png").stat().st_size > 10_000
