"""Shared fixtures: SIPp members and a real `sipshadow serve` child, all on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUas, free_port

SCENARIOS = Path(__file__).parent / "scenarios"
FAST_PROBES = "[health]\nprobe_interval_ms = 200\nprobe_misses = 2\n[status]\ninterval_s = 0.1\n"


#: Under CI (`CI=true`, which `.ci/run` sets) a skip is a failure: a system test that skips
#: because `ip netns add` or a package is missing has proven nothing, and must not pass quietly.
STRICT_SKIPS = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if shutil.which("sipp") is None:
        skip = pytest.mark.skip(reason="sipp is not installed (Debian package sip-tester; `make setup`)")
        for item in items:
            if "sipp" in item.keywords:
                item.add_marker(skip)


@contextlib.contextmanager
def sipp_members(tmp_path: Path, scenario: str | Path = "uas", transport: str = "u1") -> Iterator[list[SippUas]]:
    """Two SIPp UAS members (a, b), always stopped on the way out."""
    pair = [SippUas(tmp_path, name=f"member-{name}", scenario=scenario, timeout=120, transport=transport)
            for name in "ab"]  # fmt: skip
    try:
        for uas in pair:
            uas.start()
        yield pair
    finally:
        for uas in pair:
            uas.stop()


@pytest.fixture
def members(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[SippUas]]:
    """Two SIPp UAS members; a test may ask for a scenario with `@pytest.mark.uas_scenario`."""
    marker = request.node.get_closest_marker("uas_scenario")
    with sipp_members(tmp_path, SCENARIOS / marker.args[0] if marker else "uas") as pair:
        yield pair


@pytest.fixture
def alg(tmp_path: Path, members: list[SippUas]) -> Iterator[AlgProcess]:
    """A real `sipshadow serve` in front of the members, stopped by SIGTERM afterwards."""
    process = AlgProcess(
        ("127.0.0.1", free_port()), [uas.address for uas in members], tmp_path, config_text=FAST_PROBES
    )
    with process:
        yield process


from tests.postgres_server import clean_postgres, postgres_server  # noqa: E402, F401
