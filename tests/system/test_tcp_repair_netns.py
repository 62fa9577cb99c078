"""TCP repair in a real network namespace (issue 12's groundwork): an established connection
moves to a new socket with its unread and unacknowledged bytes, and the peer never notices."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("tcp_repair_move.py")
SOURCE = Path(__file__).parents[2] / "src"


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"sstcp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_an_established_connection_moves_to_a_new_socket_and_both_ends_talk_on(namespace: str) -> None:
    run = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, str(SCRIPT)],
        env={**os.environ, "PYTHONPATH": str(SOURCE)}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("OK"), run.stdout + run.stderr
