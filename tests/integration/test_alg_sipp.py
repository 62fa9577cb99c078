"""Real SIPp calls through a real `sipshadow serve` on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUac, SippUas
from sipshadow.runtime.status import StatusDocument
from tests.conftest import SCENARIOS

pytestmark = pytest.mark.sipp


def run_calls(alg: AlgProcess, run_dir: Path, *, calls: int, rate: float, scenario: str = "uac", **options: object):
    uac = SippUac(alg.listen, run_dir, scenario=scenario, calls=calls, rate=rate, extra_args=["-nr"], **options)
    return uac.start().wait()


def settled_status(alg: AlgProcess) -> StatusDocument:
    time.sleep(0.3)  # the status file is rewritten every 0.1 s
    return alg.status()


def test_400_calls_at_40_cps_all_complete_spread_round_robin(
    alg: AlgProcess, members: list[SippUas], tmp_path: Path
) -> None:
    result = run_calls(alg, tmp_path, calls=400, rate=40)
    assert result.ok and result.successful_calls == 400, result.summary()
    status = settled_status(alg)
    per_member = [member.calls for member in status.members]
    assert sum(per_member) == 400 and max(per_member) - min(per_member) <= 1, per_member
    assert status.counters.rejected == {} and status.internal_errors == 0
    # SIPp's uas keeps each call 4 s after the BYE (timewait) before counting it successful.
    deadline = time.monotonic() + 8.0
    while sum(answered := [uas.snapshot().successful_calls for uas in members]) < 400:
        assert time.monotonic() < deadline, answered
        time.sleep(0.5)
    assert answered == per_member, answered


@pytest.mark.uas_scenario("reinvite_uas.xml")
def test_reinvite_in_dialog_goes_through(alg: AlgProcess, tmp_path: Path) -> None:
    result = run_calls(alg, tmp_path, calls=10, rate=10, scenario=str(SCENARIOS / "reinvite_uac.xml"))
    assert result.ok and result.successful_calls == 10, result.summary()


@pytest.mark.uas_scenario("cancel_uas.xml")
def test_cancel_during_ringing_reaches_the_ringing_member(alg: AlgProcess, tmp_path: Path) -> None:
    result = run_calls(alg, tmp_path, calls=10, rate=10, scenario=str(SCENARIOS / "cancel_uac.xml"))
    assert result.ok and result.successful_calls == 10, result.summary()
    status = settled_status(alg)
    assert status.dialogs == 10 and all(member.active_calls == 0 for member in status.members)


def test_a_stopped_member_gets_no_new_calls_and_the_other_calls_complete(
    alg: AlgProcess, members: list[SippUas], tmp_path: Path
) -> None:
    uac = SippUac(alg.listen, tmp_path, calls=200, rate=20, extra_args=["-nr"], recv_timeout=2.0)
    uac.start()
    time.sleep(3.0)
    members[1].kill()
    killed_at = time.monotonic()
    while alg.status().members[1].up:
        assert time.monotonic() - killed_at < 3.0, "probes did not take the dead member out"
        time.sleep(0.05)
    calls_to_dead = alg.status().members[1].calls
    result = uac.wait()
    status = settled_status(alg)
    assert status.members[1].calls == calls_to_dead, "a dead member got new calls"
    assert status.members[0].calls + calls_to_dead == 200
    # Only calls already routed to the dead member (in flight, or sent in the detection
    # window) may fail; every call the live member took completes.
    assert result.failed_calls <= calls_to_dead - (3.0 * 20 / 2 - 2), result.summary()
    assert result.successful_calls == 200 - result.failed_calls
    assert status.members[0].active_calls == 0


def test_sigterm_stops_the_node_cleanly(alg: AlgProcess) -> None:
    assert alg.stop() == 0
    assert "stopped; final status" in alg.log_file.read_text()
