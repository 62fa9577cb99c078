"""A solo `sipshadow serve` under the live-traffic fuzzer (`sipshadow.lab.fuzz`): it answers
the broken requests it can with a 400, counts them, raises on none, and still places calls.

The corpus is what a real SIPp UAC sent and received through this very node a moment before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipshadow.core.counters import Counters
from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.fuzz import corpus_from_sipp_trace, run_fuzzer
from sipshadow.lab.sipp import SippResult, SippUas, free_port, run_uac

pytestmark = pytest.mark.sipp

FUZZER = "127.0.0.5"  # its own source address, apart from the real UAC's 127.0.0.1
CONFIG = "[health]\nprobe_interval_ms = 200\n[status]\ninterval_s = 0.1\n"


@pytest.fixture
def alg(tmp_path: Path, members: list[SippUas]) -> Iterator[AlgProcess]:
    with AlgProcess(("127.0.0.1", free_port()), [uas.address for uas in members], tmp_path,
                    config_text=CONFIG) as process:  # fmt: skip
        yield process


def traced_calls(alg: AlgProcess, run_dir: Path, name: str, calls: int = 2) -> tuple[SippResult, Path]:
    """Real calls through the node, every message SIPp sent or received written to a trace."""
    trace = run_dir / f"{name}_messages.log"
    extra = ["-nr", "-trace_msg", "-message_file", str(trace)]
    return run_uac(alg.listen, calls=calls, rate=5, run_dir=run_dir, name=name, extra_args=extra), trace


def counters(alg: AlgProcess) -> Counters:
    time.sleep(0.3)  # the status file is rewritten every 0.1 s
    status = alg.status()
    assert status.counters is not None and status.internal_errors == 0, status
    return status.counters


def test_fuzzed_node_answers_400_counts_malformed_requests_and_keeps_serving(alg: AlgProcess, tmp_path: Path) -> None:
    before, trace = traced_calls(alg, tmp_path, "uac-before")
    assert before.ok, before.summary()
    corpus = corpus_from_sipp_trace(trace)
    assert len(corpus) == 12  # per call: INVITE, 180, 200, ACK, BYE, 200
    malformed = counters(alg).malformed_requests

    report = run_fuzzer(alg.listen, corpus, seconds=3.0, rate=300, seed=20261130, source=(FUZZER, 0))

    assert alg.child.running(), alg.log_file.read_text()[-2000:]
    # 900 at the full rate; generating mutations is CPU work, and a loaded 2-core CI machine
    # has sent as few as 192 in the 3 s (the rate is a ceiling, the fuzzer never waits for answers)
    assert report.errors == 0 and report.sent > 100, report
    assert report.seconds < 3.0 + 0.5, report
    assert report.answers.get("400", 0) > 0, report
    assert counters(alg).malformed_requests > malformed
    after, _ = traced_calls(alg, tmp_path, "uac-after")
    assert after.ok, after.summary()


def test_command_line_writes_and_prints_its_report(alg: AlgProcess, tmp_path: Path) -> None:
    _, trace = traced_calls(alg, tmp_path, "uac", calls=1)
    report_file = tmp_path / "fuzz.json"
    command = [sys.executable, "-m", "sipshadow.lab.fuzz", "--target", f"{alg.listen[0]}:{alg.listen[1]}",
               "--trace", str(trace), "--seconds", "1", "--rate", "50", "--seed", "3", "--source", FUZZER,
               "--report", str(report_file)]  # fmt: skip
    printed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    report = json.loads(report_file.read_text())
    assert json.loads(printed) == report
    assert report["target"] == f"{alg.listen[0]}:{alg.listen[1]}" and report["corpus"] == 6
    assert 0 < report["sent"] <= 51 and report["errors"] == 0
    assert sum(report["answers"].values()) >= report["sent"]  # "none" makes up for the unanswered
    assert alg.child.running()
