"""Real SIPp over TCP through a real `sipshadow serve` on loopback (RFC 3261 §18, RFC 5658)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippResult, SippUac, SippUas, free_port
from sipshadow.runtime.status import StatusDocument
from tests.conftest import FAST_PROBES, SCENARIOS, sipp_members

pytestmark = pytest.mark.sipp


def tcp_member_uri(uas: SippUas) -> str:
    return f"sip:{uas.host}:{uas.port};transport=tcp"


@pytest.fixture
def tcp_members(tmp_path: Path) -> Iterator[list[SippUas]]:
    """Two SIPp UAS members listening on TCP (one connection each way: -t t1)."""
    with sipp_members(tmp_path, transport="t1") as pair:
        yield pair


@pytest.fixture
def tcp_alg(tmp_path: Path, tcp_members: list[SippUas]) -> Iterator[AlgProcess]:
    members = [tcp_member_uri(uas) for uas in tcp_members]
    with AlgProcess(("127.0.0.1", free_port()), members, tmp_path, config_text=FAST_PROBES) as process:
        yield process


def run_calls(alg: AlgProcess, run_dir: Path, transport: str, calls: int, rate: float, **options: object) -> SippResult:
    uac = SippUac(alg.listen, run_dir, calls=calls, rate=rate, extra_args=["-nr"], transport=transport, **options)
    return uac.start().wait()


def settled(alg: AlgProcess) -> StatusDocument:
    time.sleep(0.3)  # the status file is rewritten every 0.2 s
    return alg.status()


@pytest.mark.parametrize("transport", ["tn", "t1"])
def test_1000_tcp_calls_through_tcp_members_all_complete(
    tcp_alg: AlgProcess, tcp_members: list[SippUas], tmp_path: Path, transport: str
) -> None:
    result = run_calls(tcp_alg, tmp_path, transport, calls=1000, rate=250)
    assert result.ok and result.successful_calls == 1000 and result.failed_calls == 0, result.summary()
    status = settled(tcp_alg)
    assert [member.calls for member in status.members] == [500, 500]
    assert all(member.up for member in status.members)  # the probes ran over TCP and came back
    assert status.counters.rejected == {} and status.internal_errors == 0
    assert status.tcp is not None and status.tcp["accepted"] >= (1000 if transport == "tn" else 1)
    assert status.tcp["connected"] == 2  # one connection per member, reused by every call
    assert status.tcp["unframable"] == 0 and status.tcp["send_failures"] == 0


def test_a_udp_caller_with_a_3400_byte_invite_reaches_a_tcp_member(
    tcp_alg: AlgProcess, tcp_members: list[SippUas], tmp_path: Path
) -> None:
    scenario = str(SCENARIOS / "big_invite_uac.xml")
    result = run_calls(tcp_alg, tmp_path, "u1", calls=50, rate=50, scenario=scenario)
    assert result.ok and result.successful_calls == 50, result.summary()
    status = settled(tcp_alg)
    assert status.counters.rejected == {} and status.tcp is not None and status.tcp["connected"] == 2


def test_a_3400_byte_invite_for_udp_members_that_refuse_tcp_goes_over_udp(
    alg: AlgProcess, members: list[SippUas], tmp_path: Path
) -> None:
    """§18.1.1: the ALG tries TCP for a request over 1300 bytes; a member that only speaks UDP
    resets the connection, and the request goes over UDP after all (it used to be dropped)."""
    scenario = str(SCENARIOS / "big_invite_uac.xml")
    result = run_calls(alg, tmp_path, "u1", calls=20, rate=20, scenario=scenario)
    assert result.ok and result.successful_calls == 20, result.summary()
    status = settled(alg)
    assert status.tcp is not None and status.tcp["udp_fallbacks"] == 20 and status.tcp["connected"] == 0
    assert status.tcp["send_failures"] == 0


def test_a_tcp_caller_reaches_udp_members(alg: AlgProcess, members: list[SippUas], tmp_path: Path) -> None:
    result = run_calls(alg, tmp_path, "tn", calls=200, rate=100)
    assert result.ok and result.successful_calls == 200, result.summary()
    status = settled(alg)
    assert status.tcp is not None and status.tcp["accepted"] >= 200 and status.tcp["connected"] == 0
