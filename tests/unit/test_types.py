"""Type hints are checked, not decoration: the tree passes mypy, the pure packages --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "sipshadow"
STRICT = ("core", "sip", "determinism", "replication", "ha", "runtime", "link", "records")


def test_the_tree_type_checks_and_the_pure_packages_strictly() -> None:
    pytest.importorskip("mypy", reason="mypy is a dev dependency (make setup)")
    loose = subprocess.run([sys.executable, "-m", "mypy", str(SRC)], capture_output=True, text=True, timeout=240)
    assert loose.returncode == 0, loose.stdout
    strict = [str(SRC / name) for name in STRICT]
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *strict], capture_output=True, text=True, timeout=240
    )
    assert checked.returncode == 0, checked.stdout
