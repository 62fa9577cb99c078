"""The heartbeat's round trip: each beat echoes the peer's last stamp and how long it was held,
so a node times the round trip on its own clock alone; beats without the fields still decode.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from sipshadow.detect.heartbeat import CODEC, Heartbeat, HeartbeatDetector, round_trip_s, stamped
from sipshadow.lab.sipp import free_port
from sipshadow.link import Peering

HOST = "127.0.0.1"
KEY = b"k" * 32
#: Long enough that a beat is held for tens of ms: a round trip that forgot `held` is caught.
INTERVAL = 0.1


class OldHeartbeat(msgspec.Struct, array_like=True, tag=5):
    """The beat of a node from before the round trip (five fields)."""

    node_id: str
    epoch: int
    role: str
    released: int
    sent_at: float = 0.0


def test_an_old_beat_decodes_and_an_old_node_reads_a_new_one() -> None:
    old = OldHeartbeat("p", 3, "primary", 7, 12.5)
    assert CODEC.decode(b"\x05" + msgspec.msgpack.encode(old)) == Heartbeat("p", 3, "primary", 7, 12.5, 0.0, 0.0)
    new = msgspec.msgpack.encode(Heartbeat("p", 3, "primary", 7, 12.5, echo=4.0, held=0.25))
    assert msgspec.msgpack.decode(new, type=OldHeartbeat) == old


def test_the_round_trip_subtracts_the_time_the_peer_held_our_beat() -> None:
    assert round_trip_s(Heartbeat("p", 0, "primary", 0, 50.0, echo=10.0, held=0.3), 10.5) == pytest.approx(0.2)
    assert round_trip_s(Heartbeat("p", 0, "primary", 0, 50.0), 10.5) is None  # echoes nothing
    assert round_trip_s(Heartbeat("p", 0, "primary", 0, 50.0, echo=10.0, held=0.6), 10.5) is None  # impossible
    for held in (float("-inf"), float("nan")):
        assert round_trip_s(Heartbeat("p", 0, "primary", 0, 50.0, echo=10.0, held=held), 10.5) is None


def test_a_beat_is_stamped_with_how_long_the_echoed_beat_was_held() -> None:
    received_at = time.monotonic() - 0.2
    echoing = stamped(Heartbeat("s", 0, "shadow", 0, echo=99.0), received_at)
    assert echoing.sent_at - received_at == pytest.approx(echoing.held) and echoing.held >= 0.2
    assert stamped(Heartbeat("s", 0, "shadow", 0), received_at).held == 0.0  # nothing echoed, nothing held


def beating(name: str, peer: str, ports: dict[str, int], rtts: list[float]) -> HeartbeatDetector:
    """Node `name`'s detector, beating at `ports[peer]`; its round trips go to `rtts`."""
    return HeartbeatDetector(
        peering=Peering(KEY, name, peer),
        peer=(HOST, ports[peer]),
        interval_s=INTERVAL,
        misses=4,
        beat=lambda: Heartbeat(name, 0, "shadow", 0),
        on_peer_beat=lambda beat: None,
        on_peer_dead=lambda: None,
        on_rtt=rtts.append,
    )


async def measure_pair(samples: int) -> dict[str, tuple[list[float], float | None]]:
    """Two detectors beating each other on loopback until each measured `samples` round trips."""
    ports = {"a": free_port(), "b": free_port()}
    rtts: dict[str, list[float]] = {"a": [], "b": []}
    detectors = {name: beating(name, peer, ports, rtts[name]) for name, peer in (("a", "b"), ("b", "a"))}
    try:
        for name, detector in detectors.items():
            await detector.start((HOST, ports[name]))
        deadline = time.monotonic() + 10
        while min(len(found) for found in rtts.values()) < samples:
            assert time.monotonic() < deadline, rtts
            await asyncio.sleep(INTERVAL / 2)
    finally:
        for detector in detectors.values():
            detector.close()
    return {name: (rtts[name], detectors[name].last_rtt_s) for name in detectors}


def test_two_detectors_on_loopback_measure_a_small_positive_round_trip() -> None:
    """On loopback the round trip is well under a ms, and under 50 ms even on a loaded host; the
    beats are held up to two intervals (200 ms), so a round trip that kept `held` would fail."""
    for name, (rtts, last) in asyncio.run(measure_pair(5)).items():
        assert len(rtts) >= 5, name
        assert all(0 < rtt < 0.050 for rtt in rtts), (name, rtts)
        assert last == rtts[-1]
