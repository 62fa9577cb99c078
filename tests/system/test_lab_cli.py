"""`sipshadow lab up | fail | down` as an operator types them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sipp


def sipshadow(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipshadow.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_up_fail_down_leaves_nothing_behind(netns_ok: None, tmp_path: Path) -> None:
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    try:
        up = sipshadow(tmp_path, "lab", "up", "--out", "runs/lab")
        assert up.returncode == 0, up.stderr
        prefix = json.loads((tmp_path / "runs/lab/state.json").read_text())["prefix"]
        assert f"{prefix}-shadow" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert sipshadow(tmp_path, "lab", "up").returncode == 2  # one lab at a time
        fail = sipshadow(tmp_path, "lab", "fail", "primary", "--how", "crash")
        assert fail.returncode == 0, fail.stderr
        status = tmp_path / "runs/lab/shadow/alg-status.json"
        deadline = time.monotonic() + 5
        while json.loads(status.read_text())["ha"]["role"] != "primary":
            assert time.monotonic() < deadline, "the shadow did not take over"
            time.sleep(0.05)
    finally:
        down = sipshadow(tmp_path, "lab", "down")
    assert down.returncode == 0, down.stderr
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert after - before == set()
    assert not (tmp_path / "runs/lab/state.json").exists()
