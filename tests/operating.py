"""What the operator's tests share: `sipshadow ctl` as a command, and waiting for a state."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def ctl(socket: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`sipshadow ctl --socket SOCKET ARGV...` as a child process, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "sipshadow.cli", "ctl", "--socket", str(socket), *argv],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` every 20 ms; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s:g} s for {what}"
        time.sleep(0.02)
