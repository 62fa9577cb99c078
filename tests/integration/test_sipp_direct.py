"""SIPp scenarios and the sipshadow.lab.sipp driver, UAC -> UAS directly.

No ALG in between: these tests pin down that the scenarios and the driver
are correct on their own, so a failure in an ALG test is the ALG's fault.
Everything runs on 127.0.0.1, bounded in calls and time.
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from sipshadow.lab.sipp import (
    SippResult,
    SippUac,
    SippUas,
    free_port,
    parse_sipp_duration,
    read_stat_rows,
    run_uac,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(
        shutil.which("sipp") is None,
        reason="sipp binary not found (install Debian package sip-tester)",
    ),
]

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def _explain(result: SippResult) -> str:
    """Assertion message: counters plus SIPp's own error log."""
    return f"{result.summary()}\n{result.errors_text()[-2000:]}"


def _assert_all_ok(result: SippResult, calls: int) -> None:
    assert result.returncode == 0, _explain(result)
    assert result.failed_calls == 0, _explain(result)
    assert result.successful_calls == calls, _explain(result)
    assert result.total_calls == calls, _explain(result)
    assert not result.timed_out, _explain(result)


def _options(port: int, call_id: str, sock: socket.socket) -> str:
    """Send one out-of-call OPTIONS like an ALG health probe; return the reply."""
    local_port = sock.getsockname()[1]
    branch = "z9hG4bK" + uuid.uuid4().hex
    request = (
        f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1:{local_port}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:ping@127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    sock.sendto(request.encode(), ("127.0.0.1", port))
    reply = sock.recv(65535).decode()
    assert f"branch={branch}" in reply, reply
    return reply


def test_stat_csv_parsing(tmp_path: Path) -> None:
    stat = tmp_path / "x.csv"
    stat.write_text(
        "StartTime;TotalCallCreated;SuccessfulCall(C);ResponseTime1(C);\n"
        "2026-01-01\t00:00:00.0\t1.0;3;2;00:00:01:250000;\n"
        "2026-01-01\t00:00:01.0\t2.0;5;4;00:0"  # row being written: ignored
    )
    rows = read_stat_rows(stat)
    assert rows == [
        {
            "StartTime": "2026-01-01\t00:00:00.0\t1.0",
            "TotalCallCreated": "3",
            "SuccessfulCall(C)": "2",
            "ResponseTime1(C)": "00:00:01:250000",
        }
    ]
    assert parse_sipp_duration("00:00:01:250000") == 1.25
    assert parse_sipp_duration("01:02:03") == 3723.0
    assert read_stat_rows(tmp_path / "missing.csv") == []


def test_builtin_uac_to_builtin_uas(tmp_path: Path) -> None:
    with SippUas(tmp_path, timeout=60) as uas:
        result = run_uac(uas.address, "uac", calls=50, rate=25, run_dir=tmp_path, timeout=20)
    _assert_all_ok(result, 50)
    assert "1" in result.response_times_s  # rtd="true" on the built-in uac's 200
    for column in ("SuccessfulCall(C)", "FailedCall(C)", "TotalCallCreated", "CurrentCall"):
        assert column in result.stats
    assert uas.result is not None
    assert uas.result.failed_calls == 0, _explain(uas.result)
    assert uas.result.total_calls == 50, _explain(uas.result)


def test_reinvite_pair(tmp_path: Path) -> None:
    uas = SippUas(tmp_path, scenario=SCENARIOS / "reinvite_uas.xml", timeout=60)
    with uas:
        result = run_uac(
            uas.address,
            SCENARIOS / "reinvite_uac.xml",
            calls=10,
            rate=20,
            extra_args=["-d", "100"],  # hold time of each <pause/>
            run_dir=tmp_path,
            timeout=20,
        )
        # Graceful stop lets the UAS calls leave their 1 s timewait and count.
        uas_result = uas.stop(grace_s=5)
    _assert_all_ok(result, 10)
    assert uas_result.returncode == 0, _explain(uas_result)
    assert uas_result.successful_calls == 10, _explain(uas_result)
    assert uas_result.failed_calls == 0, _explain(uas_result)


def test_cancel_pair(tmp_path: Path) -> None:
    uas = SippUas(tmp_path, scenario=SCENARIOS / "cancel_uas.xml", timeout=60)
    with uas:
        result = run_uac(
            uas.address,
            SCENARIOS / "cancel_uac.xml",
            calls=10,
            rate=20,
            run_dir=tmp_path,
            timeout=20,
        )
        uas_result = uas.stop(grace_s=5)
    _assert_all_ok(result, 10)
    # The UAS checks that CANCEL and ACK reuse the INVITE's branch.
    assert uas_result.returncode == 0, _explain(uas_result)
    assert uas_result.successful_calls == 10, _explain(uas_result)
    assert uas_result.failed_calls == 0, _explain(uas_result)


def test_out_of_call_options_probe_gets_200(tmp_path: Path) -> None:
    with (
        SippUas(tmp_path, timeout=60) as uas,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        for _ in range(3):
            call_id = uuid.uuid4().hex
            reply = _options(uas.port, call_id, sock)
            assert reply.startswith("SIP/2.0 200"), reply
            assert f"Call-ID: {call_id}" in reply
            assert "CSeq: 1 OPTIONS" in reply
    assert uas.result is not None
    # -aa answers but SIPp still opens (and never closes) a "call" per probe
    # Call-ID; it is not a failed call.
    assert uas.result.failed_calls == 0, _explain(uas.result)
    # SIPp bumps AutoAnswered after sending the 200, so the final row taken
    # right at SIGTERM can miss the last probe.
    assert uas.result.counter("AutoAnswered(C)") >= 2, _explain(uas.result)
    assert uas.result.total_calls == 3, _explain(uas.result)


def test_background_uac_sees_failures_when_member_dies(tmp_path: Path) -> None:
    uas = SippUas(tmp_path, timeout=60).start()
    uac = SippUac(
        uas.address,
        tmp_path,
        calls=40,
        rate=20,
        recv_timeout=1.0,
        timeout=20,
        extra_args=["-d", "200"],
    )
    try:
        uac.start()
        time.sleep(0.8)
        assert uac.running()
        uas.kill()  # member crash: no graceful anything
        result = uac.wait()
    finally:
        uac.stop()
        uas.stop()
    assert result.returncode == 1, _explain(result)
    assert result.total_calls == 40, _explain(result)
    assert 0 < result.successful_calls < 40, _explain(result)
    assert result.failed_calls == 40 - result.successful_calls, _explain(result)
    assert set(result.failure_causes) <= {
        "FailedTimeoutOnRecv(C)",
        "FailedMaxUDPRetrans(C)",
        "FailedCannotSendMessage(C)",
    }, _explain(result)


def test_uas_on_busy_port_fails_fast(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        uas = SippUas(tmp_path, port=port, timeout=10)
        with pytest.raises(RuntimeError, match="exited with 254"):
            uas.start()
        assert not uas.running()
