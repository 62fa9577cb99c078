"""SIGKILL the primary under real SIPp load (retransmissions on), on loopback, in each HA mode."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from sipshadow.lab.pair import LoopbackPair
from sipshadow.lab.sipp import SippResult, SippUac, SippUas, free_port
from sipshadow.link.frames import HEADER, MAGIC
from sipshadow.link.handshake import Offer, handshake_key, seal_handshake
from sipshadow.link.session import Session
from sipshadow.replication.wire import CODEC, Ack

pytestmark = pytest.mark.sipp

CALL_S, RATE, CALLS = 20, 20, 200  # calls of 20 s at 20 cps; the kill comes 5 s in
KILL_AT_S = 5.0


def make_pair(tmp_path: Path, members: list[SippUas], mode: str) -> LoopbackPair:
    return LoopbackPair(("127.0.0.1", free_port()), [m.address for m in members], tmp_path, mode=mode)


def start_calls(pair: LoopbackPair, tmp_path: Path, recv_timeout: float = 10.0) -> SippUac:
    uac = SippUac(pair.service, tmp_path, calls=CALLS, rate=RATE, timeout=CALL_S + 40,
                  recv_timeout=recv_timeout, extra_args=["-d", str(CALL_S * 1000)])  # fmt: skip
    return uac.start()


def test_active_takeover_keeps_every_call_and_survives_a_second_kill_after_rejoin(
    tmp_path: Path, members: list[SippUas]
) -> None:
    with make_pair(tmp_path, members, "active") as pair:
        uac = start_calls(pair, tmp_path)
        time.sleep(KILL_AT_S)
        pair.kill("a")
        pair.wait_for_primary("b", timeout_s=2.0)
        takeover = pair.status("b").ha.takeovers[0]
        assert takeover.dialogs >= KILL_AT_S * RATE * 0.8, takeover
        pair.restart("a")  # the old primary rejoins as the shadow, by state transfer
        assert pair.role_of("a") == "shadow"
        time.sleep(3.0)
        pair.kill("b")  # the second failure
        pair.wait_for_primary("a", timeout_s=2.0)
        result = uac.wait()
    assert result.successful_calls == CALLS and result.failed_calls == 0, result.summary()


def test_network_mode_loses_the_calls_that_were_up_and_keeps_the_later_ones(
    tmp_path: Path, members: list[SippUas]
) -> None:
    with make_pair(tmp_path, members, "network") as pair:
        uac = start_calls(pair, tmp_path)
        time.sleep(KILL_AT_S)
        pair.kill("a")
        killed_at = time.monotonic()
        pair.wait_for_primary("b", timeout_s=2.0)
        result = uac.wait()
        rejected = pair.status("b").counters.rejected
    up_at_kill = KILL_AT_S * RATE
    assert abs(result.failed_calls - up_at_kill) <= 0.1 * up_at_kill, result.summary()
    assert result.successful_calls == CALLS - result.failed_calls
    assert rejected.get(481, 0) >= 0.9 * result.failed_calls, rejected  # their BYEs got 481
    assert time.monotonic() - killed_at < CALL_S + 30


def test_no_ha_loses_every_call_after_the_kill(tmp_path: Path, members: list[SippUas]) -> None:
    with make_pair(tmp_path, members, "none") as pair:
        uac = start_calls(pair, tmp_path, recv_timeout=3.0)
        time.sleep(KILL_AT_S)
        pair.kill("a")
        result: SippResult = uac.wait()
    assert result.successful_calls == 0 and result.failed_calls == CALLS, result.summary()


def test_forged_and_future_frames_are_refused_and_the_pair_keeps_running(
    tmp_path: Path, members: list[SippUas]
) -> None:
    with make_pair(tmp_path, members, "active") as pair:
        port = pair.replication_ports["a"]
        forged = [
            seal_handshake(Offer("intruder", "", b"n" * 16), handshake_key(b"not-the-key-of-this-pair")),
            HEADER.pack(MAGIC, 9, 32, 16) + b"x" * 16,  # a future protocol version
            Session.between(b"x" * 16, "i", b"a" * 16, "j", b"b" * 16).seal(CODEC.encode(Ack(10**9))),  # no handshake
        ]
        for frame in forged:  # each on its own connection: a refused frame closes its connection
            with socket.create_connection(("127.0.0.1", port)) as intruder:
                intruder.sendall(frame)
                intruder.settimeout(2)
                assert intruder.recv(100) == b""  # closed by the primary
        time.sleep(0.3)  # the next status write
        replication = pair.status("a").replication
        assert replication.refused_frames == 3, replication
        assert replication.shadow_attached and pair.status("b").ha.shadow.synced
        uac = SippUac(pair.service, tmp_path, calls=20, rate=20, recv_timeout=5.0)
        result = uac.start().wait()
    assert result.successful_calls == 20, result.summary()


def test_a_short_freeze_under_the_stall_limit_is_ridden_through_without_a_takeover(
    tmp_path: Path, members: list[SippUas]
) -> None:
    """300 ms of SIGSTOP: the beat process keeps beating (the node's last beat is fresh), so
    nobody takes over and nobody fences; the calls made just after all complete."""
    import os
    import signal

    with make_pair(tmp_path, members, "active") as pair:
        os.kill(pair.nodes["a"].pid, signal.SIGSTOP)
        time.sleep(0.3)
        os.kill(pair.nodes["a"].pid, signal.SIGCONT)
        time.sleep(0.5)
        assert pair.status("b").ha.takeovers == [] and pair.role_of("a") == "primary"
        assert pair.status("a").ha.fences == 0
        result = SippUac(pair.service, tmp_path, calls=20, rate=20, recv_timeout=5.0).start().wait()
    assert result.successful_calls == 20, result.summary()


def test_a_stalled_primary_is_not_a_dead_one_the_shadow_steps_back_and_resyncs(
    tmp_path: Path, members: list[SippUas]
) -> None:
    import os
    import signal

    with make_pair(tmp_path, members, "active") as pair:
        primary = pair.nodes["a"].pid
        os.kill(primary, signal.SIGSTOP)  # beats stop after the stall limit; it still owns the address
        time.sleep(1.0)
        os.kill(primary, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while not (pair.role_of("b") == "shadow" and (shadow := pair.status("b").ha.shadow) and shadow.synced):
            assert time.monotonic() < deadline, pair.status("b").ha
            time.sleep(0.05)
        assert pair.status("b").ha.takeovers[0].aborted
        # it fences itself for a window once its beat process reports the silence, then serves on
        while not (pair.role_of("a") == "primary" and pair.status("a").ha.fences == 1):
            assert time.monotonic() < deadline, pair.status("a").ha
            time.sleep(0.05)
        assert pair.status("a").ha.step_downs == 0
        result = SippUac(pair.service, tmp_path, calls=20, rate=20, recv_timeout=5.0).start().wait()
    assert result.successful_calls == 20, result.summary()
