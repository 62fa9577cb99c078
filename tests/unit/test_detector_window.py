"""The heartbeat detector's window: the peer's lateness on its own clock widens it, our stalls
do not, and nothing widens it past the cap (issue 10: a 217 ms takeover after a scheduling stall).

Times are seconds; the peer's send stamps and our arrival clock are fed by hand, no sockets.
"""

from __future__ import annotations

import asyncio

import pytest

from sipshadow.detect.heartbeat import (
    CODEC,
    JITTER_MEMORY_S,
    WARMUP_INTERVALS,
    Heartbeat,
    HeartbeatDetector,
    SilenceWindow,
    stamped,
)
from sipshadow.link import DatagramChannel, Peering

INTERVAL, MISSES = 0.010, 4  # the defaults of runtime/config.py: 10 ms, 4 misses
BASE = INTERVAL * MISSES
CAP = 1.5 * BASE
WARMUP = WARMUP_INTERVALS * INTERVAL
KEY = b"k" * 32


class Peer:
    """A peer beating into `window`: its clock reads `offset` s ahead of ours, transit takes no time."""

    def __init__(self, window: SilenceWindow, now: float = 5.0, offset: float = 95.0) -> None:
        self.window = window
        self.now = now
        self.offset = offset
        window.beat(self.now + offset, self.now)

    def beats(self, count: int, gap: float = INTERVAL) -> Peer:
        for _ in range(count):
            self.now += gap
            self.window.beat(self.now + self.offset, self.now)
        return self

    def warm(self) -> Peer:
        """Punctual beats until the warm-up is over."""
        return self.beats(WARMUP_INTERVALS + 1)

    @property
    def window_s(self) -> float:
        return self.window.window_s(self.now)


def fresh() -> SilenceWindow:
    return SilenceWindow(INTERVAL, MISSES)


def test_a_punctual_peer_gets_the_tight_window() -> None:
    assert Peer(fresh()).warm().beats(50).window_s == pytest.approx(BASE)


def test_a_peer_just_heard_gets_the_capped_window_until_its_lateness_is_known() -> None:
    """At start (and after a rejoin) a node is at its busiest and we have seen nothing of it yet."""
    peer = Peer(fresh())
    assert peer.beats(WARMUP_INTERVALS - 1).window_s == pytest.approx(CAP)
    assert peer.beats(2).window_s == pytest.approx(BASE)


def test_our_own_stall_does_not_widen_the_window() -> None:
    """The issue-10 case: our loop stalls 150 ms, the peer's beats wait in the socket buffer and
    are read in one go. Arrival gaps of 150 ms, send gaps of 10 ms: the peer was punctual."""
    window = fresh()
    peer = Peer(window).warm()
    sent = peer.now + 95.0
    stalled_until = peer.now + 0.150
    for index in range(1, 16):
        window.beat(sent + index * INTERVAL, stalled_until)  # fifteen beats read at once
    assert window.worst_gap_s(stalled_until) == pytest.approx(INTERVAL)
    assert window.window_s(stalled_until) == pytest.approx(BASE)


def test_a_late_peer_widens_the_window_to_twice_its_gap() -> None:
    peer = Peer(fresh()).warm().beats(1, gap=0.025).beats(1)
    assert peer.window.worst_gap_s(peer.now) == pytest.approx(0.025)
    assert peer.window_s == pytest.approx(0.050)


def test_one_long_stall_of_the_peer_widens_the_window_only_up_to_the_cap() -> None:
    assert Peer(fresh()).warm().beats(1, gap=0.200).window_s == pytest.approx(CAP)  # descheduled 200 ms


def test_the_cap_can_be_given_and_is_never_below_the_tight_window() -> None:
    assert SilenceWindow(INTERVAL, MISSES, max_s=0.080).max_s == pytest.approx(0.080)
    assert SilenceWindow(INTERVAL, MISSES, max_s=0.010).max_s == pytest.approx(BASE)


def test_the_widening_lasts_the_memory_then_the_window_is_tight_again() -> None:
    peer = Peer(fresh()).warm().beats(1, gap=0.030)
    late_at = peer.now
    assert peer.window.window_s(late_at + JITTER_MEMORY_S) == pytest.approx(0.060)
    assert peer.window.window_s(late_at + JITTER_MEMORY_S + 0.001) == pytest.approx(BASE)


def test_the_memory_is_a_sliding_maximum_not_the_first_gap_held() -> None:
    """A smaller late beat seen after the worst one still counts once the worst one is forgotten."""
    peer = Peer(fresh()).warm().beats(1, gap=0.030)
    first = peer.now
    peer.beats(400).beats(1, gap=0.025)  # 4 s on, late again, by less
    second = peer.now
    assert peer.window.window_s(first + JITTER_MEMORY_S + 0.001) == pytest.approx(0.050)
    assert peer.window.window_s(second + JITTER_MEMORY_S + 0.001) == pytest.approx(BASE)


def test_sustained_jitter_under_the_cap_never_outlasts_the_window() -> None:
    """A peer late every few seconds, by less than the cap, once it has shown its lateness: each
    silence before a beat stays inside the window in force just before it (no false takeover)."""
    window = fresh()
    peer = Peer(window).warm()
    late = {100: 0.026, 700: 0.027, 1300: 0.028, 1900: 0.029}  # beat index -> gap: every 6 s, then
    late.update({index: 0.055 for index in range(2000, 20000, 800)})  # 55 ms every 8 s for 2.5 min
    for index in range(20000):
        gap = late.get(index, INTERVAL)
        assert gap < window.window_s(peer.now + gap), index
        peer.beats(1, gap)


def test_a_replayed_or_reordered_beat_measures_no_gap() -> None:
    window = fresh()
    peer = Peer(window).warm()
    assert window.beat(99.0, peer.now) is None  # an old beat: ignored, the reference stays
    peer.beats(1)
    assert window.worst_gap_s(peer.now) == pytest.approx(INTERVAL)
    assert peer.window_s == pytest.approx(BASE)


def test_the_silence_of_a_peer_declared_dead_is_no_jitter() -> None:
    window = fresh()
    peer = Peer(window).warm()
    window.lost()
    peer.now, peer.offset = peer.now + 3.0, -4.0  # back 3 s later, restarted on another clock
    assert window.beat(peer.now + peer.offset, peer.now) is None
    assert window.worst_gap_s(peer.now) == pytest.approx(INTERVAL)
    assert peer.window_s == pytest.approx(CAP)  # and warming up again
    assert peer.warm().window_s == pytest.approx(BASE)


def peer_channel(own: DatagramChannel) -> DatagramChannel:
    """Node "p"'s channel, in session with `own` (node "s"'s) after one Offer and Answer."""
    peer = DatagramChannel(CODEC, Peering(KEY, "p", "s"), nonce=b"p" * 16)
    answer = own.receive(peer.offer()).write
    assert peer.receive(answer).refused is None and peer.session is not None
    return peer


def test_a_beat_is_stamped_when_it_leaves_and_the_stamp_survives_the_frame() -> None:
    beat = Heartbeat("p", 1, "primary", 9)
    assert beat.sent_at == 0.0  # a beat built without a stamp (the node's view of itself)
    own = DatagramChannel(CODEC, Peering(KEY, "s", "p"), nonce=b"s" * 16)
    frame = peer_channel(own).seal(stamped(beat))
    assert frame is not None
    [opened] = own.receive(frame).messages
    assert isinstance(opened, Heartbeat) and opened.sent_at > 0
    assert (opened.node_id, opened.epoch, opened.role, opened.released) == ("p", 1, "primary", 9)


def detector() -> HeartbeatDetector:
    return HeartbeatDetector(
        peering=Peering(KEY, "s", "p"), peer=("127.0.0.1", 9), interval_s=INTERVAL, misses=MISSES,
        beat=lambda: Heartbeat("s", 0, "shadow", 0), on_peer_beat=lambda beat: None, on_peer_dead=lambda: None,
    )  # fmt: skip


_peers: dict[int, DatagramChannel] = {}


def frame_for(own: HeartbeatDetector, sent_at: float) -> bytes:
    """A beat of node "p" sent at `sent_at`, sealed in session with `own`."""
    peer = _peers.get(id(own))
    if peer is None:
        peer = _peers[id(own)] = peer_channel(own.channel)
    sealed = peer.seal(Heartbeat("p", 0, "primary", 0, sent_at))
    assert sealed is not None
    return sealed


def test_the_detector_measures_gaps_on_the_senders_stamps() -> None:
    """Beats read back to back (as after a stall of ours) but sent 10 ms apart measure 10 ms
    gaps; one sent 30 ms after the last measures 30 ms. Unstamped beats measure nothing."""

    async def feed() -> tuple[float, float, float]:
        punctual, late, unstamped = detector(), detector(), detector()
        for index in range(15):
            punctual.datagram_received(frame_for(punctual, 100.0 + index * INTERVAL), ("127.0.0.1", 9))
        for sent_at in (100.0, 100.030):
            late.datagram_received(frame_for(late, sent_at), ("127.0.0.1", 9))
        for _ in range(3):
            unstamped.datagram_received(frame_for(unstamped, 0.0), ("127.0.0.1", 9))
            await asyncio.sleep(0.03)
        now = asyncio.get_running_loop().time()
        return tuple(d.window.worst_gap_s(now) for d in (punctual, late, unstamped))  # type: ignore[return-value]

    punctual, late, unstamped = asyncio.run(feed())
    assert punctual == pytest.approx(INTERVAL)
    assert late == pytest.approx(0.030)
    assert unstamped == 0.0


def test_the_beat_process_sees_its_node_alive_and_a_missing_one_as_gone() -> None:
    """`exiting` reads the kernel's flags of the node: a live process is not exiting; one that
    does not exist is (the beat stops either way once the node is gone)."""
    import os

    from sipshadow.detect.beater import exiting

    assert not exiting(os.getpid())
    assert exiting(2**22 + 12345)  # above the default pid_max: no such process
