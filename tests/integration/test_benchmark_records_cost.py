"""`benchmarks/records_cost.py --quick` runs end to end: a node with records off, to SQLite and
to a real PostgreSQL, each placing its calls, no record missing, and a JSON report of the CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sipshadow.lab.postgres import missing_reason

pytestmark = pytest.mark.sipp

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "records_cost.py"
TIMEOUT_S = 120


def run_quick(out: Path) -> dict:
    """The benchmark's JSON; on a timeout it gets SIGTERM (which it unwinds like Ctrl-C, so its
    nodes, SIPp and the PostgreSQL server are stopped), then SIGKILL."""
    process = subprocess.Popen([sys.executable, str(BENCHMARK), "--quick", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"records_cost.py --quick took over {TIMEOUT_S} s:\n{stderr}")
    assert process.returncode == 0, stderr
    return json.loads(stdout)


def positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_quick_run_reports_the_cost_of_records_off_sqlite_and_postgres(tmp_path: Path) -> None:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    report = run_quick(tmp_path)
    assert {"machine", "steps", "summary"} <= report.keys()
    steps = report["steps"]
    assert [step["case"] for step in steps] == ["off", "sqlite", "postgres"]
    for step in steps:
        assert step["rate_cps"] == 200 and step["calls"] == 1000, step
        assert step["successful"] == step["calls"] and step["failed"] == 0, step
        assert positive(step["node_cpu_s_per_1000_calls"]), step
        if step["case"] != "off":
            assert step["settled"] and step["missing"] == 0, step
            assert step["records_made"] >= step["successful"], step
            assert step["records_ended_by_bye"] == step["distinct_call_ids"] == step["successful"], step
    assert positive(steps[2]["postgres_server_cpu_s_per_1000_calls"]), steps[2]
    summary = report["summary"]
    cpu = summary["cpu_per_1000_s"]["200"]
    assert set(cpu) == {"off", "sqlite", "postgres"} and all(positive(v) for v in cpu.values()), cpu
    ratio = summary["overhead_ratio"]["200"]
    assert set(ratio) == {"sqlite", "postgres"} and all(positive(v) for v in ratio.values()), ratio
    assert positive(summary["postgres_server_cpu_per_1000_s"]["200"]) and summary["missing_records"] == 0
