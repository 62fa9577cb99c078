"""The experiment's command line refuses bad values with one line, before touching the kernel."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sipshadow.cli import main
from sipshadow.lab.report import write_report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modes", "none,warp"], "--modes"),
        (["--rates", "20,fast"], "--rates"),
        (["--repeat", "0"], "must be positive"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lab", "experiment", *args]) == 2
    assert message in capsys.readouterr().err


def test_report_states_the_table_the_paper_and_the_machine(tmp_path: Path) -> None:
    table = {
        "network": {50: {"mean": 0.667, "stdev": 0.01, "runs": 3, "failover_ms": 42.0}},
        "active": {50: {"mean": 0.0, "stdev": 0.0, "runs": 3, "failover_ms": 44.0}},
        "none": {50: {"mean": 1.0, "stdev": 0.0, "runs": 3, "failover_ms": math.nan}},
    }
    config = {"modes": ["none", "network", "active"], "rates": [50], "call_duration_s": 4.0, "fail_at_s": 3.0,
              "after_failure_s": 19.0, "repeat": 3, "members": "sipp", "fault": "crash"}  # fmt: skip
    cost = {"none": {"max_zero_failure_cps": 1000, "median_response_ms": 0.14, "ladder": [250, 500, 1000]}}
    write_report(tmp_path / "report.md", table, config, 100.0, [], cost)
    report = (tmp_path / "report.md").read_text()
    assert "| active replication | 50 | 3 | 0.00 % ± 0.00 | 6.39 % | 44 |" in report
    assert "| no HA | 50 | 3 | 100.00 % ± 0.00 | 100.00 % | n/a |" in report
    assert "13.6 % of the active calls" in report and "- python:" in report
