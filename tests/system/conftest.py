"""System-test fixtures: a fresh namespace test bed per test, always torn down; skipped without root."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from sipshadow.lab.bed.testbed import Testbed, Topology, new_prefix


@functools.cache
def netns_unusable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can (probes by adding and deleting one)."""
    if os.geteuid() != 0:
        return "system tests need root (they create network namespaces)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"{new_prefix()}-probe"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is unusable: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, text=True, check=False)
    return None


@pytest.fixture
def netns_ok() -> None:
    """Skip unless network namespaces can be created."""
    reason = netns_unusable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def testbed(netns_ok: None, request: pytest.FixtureRequest) -> Iterator[Testbed]:
    """A test bed with a unique prefix; its namespaces (and processes in them) go away whatever happens."""
    bed = Testbed(Topology())
    request.addfinalizer(bed.down)
    bed.up()
    yield bed
