"""Under CI=true a skipped test fails the run; elsewhere a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def run_pytest_on_a_skip(tmp_path: Path, ci: str) -> int:
    test = "import pytest\n\n\ndef test_needs_a_kernel():\n    pytest.skip('no netns')\n"
    (tmp_path / "test_skips.py").write_text(test)
    environment = {key: value for key, value in os.environ.items() if key != "CI"} | {"CI": ci}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
               str(tmp_path / "test_skips.py")]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, timeout=120).returncode


def test_a_skip_fails_under_ci_and_stays_a_skip_elsewhere(tmp_path: Path) -> None:
    assert run_pytest_on_a_skip(tmp_path, "true") == 1
    assert run_pytest_on_a_skip(tmp_path, "") == 0
