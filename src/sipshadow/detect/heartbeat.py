"""UDP heartbeats both ways, sealed per session; the peer is dead after a window of silence.

Beats are sealed by a `sipshadow.link.DatagramChannel`: until both ends hold a session (a
handshake with a nonce from each, renewed whenever either restarts) a node sends Offers, not
beats, and only a beat that opens under the current session, with a counter above the last,
from the configured peer, in a known role and a bounded epoch, counts. A captured beat
replayed later is stale; one from before a restart is out of session.

Each beat also carries the sender's role, epoch and released sequence number, so the shadow
learns how far the primary has sent outputs even when no log traffic flows, and a node that
starts while a primary already serves learns it must join as the shadow.

Beats leave from a small child process (`sipshadow.detect.beater`), not from the event loop
nor a thread of it: a loop busy for tens of ms (a state-transfer snapshot, a burst of traffic)
or an interpreter lock held by one long call must not look like a dead node and start a
takeover against a live primary. The child beats only while the loop has turned within
`beater.STALL_LIMIT_S`, so a wedged node still falls silent and is taken over, and it exits
the moment the node dies.

The window is `misses` intervals, widened when the peer itself has been late (`SilenceWindow`).
Lateness is measured on the sender's clock: each beat carries the time it left, so beats that
waited in our socket buffer while our own loop was stalled are not taken for the peer's jitter
(such a stall once held the window at 318 ms for 10 s: issue 10's slow takeovers). The window
never exceeds `max_window_s`, so a verdict comes at most that long, plus a tick or two of the
watch loop, after the peer's last beat, whatever happened before.

The beats also time the round trip to the peer without synchronized clocks: each one echoes the
`sent_at` of the last beat received from the peer and says how long it was held before this one
left, so the node whose beat is echoed subtracts its own two readings of its own clock
(`round_trip_s`). What it measures is what the nodes see: the network plus both sockets' queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable

import msgspec

from sipshadow.core.actions import Address
from sipshadow.detect.beater import Beater
from sipshadow.detect.throttle import ThrottledLog
from sipshadow.link import NONCE_BYTES, DatagramChannel, MessageCodec, Peering, Refused
from sipshadow.link.session import Session


class Heartbeat(msgspec.Struct, array_like=True, tag=5):
    """One UDP datagram on the heartbeat link: who I am, my role, how far I have released, and
    when it left (`sent_at`: the sender's `time.monotonic()`, s; 0.0 when not stamped).

    `echo` is the `sent_at` of the last beat the sender received from its peer (0.0: none yet),
    `held` how long (s) the sender had it when this beat left: so the peer times its round trip.
    Trailing fields with defaults: a beat of an older node decodes (it echoes nothing), and an
    older node drops them from ours (msgspec ignores extra trailing items of an array-like struct).
    """

    node_id: str
    epoch: int
    role: str
    released: int
    sent_at: float = 0.0
    echo: float = 0.0
    held: float = 0.0


#: Heartbeats are message kind 5 of the pair's format; a sealed one is well under 512 bytes.
CODEC = MessageCodec({Heartbeat: 5}, Heartbeat, 512)
#: The roles a beat may claim (`sipshadow.ha.roles.Role` values).
ROLES = frozenset({"starting", "shadow", "taking-over", "primary", "fenced"})
#: The highest epoch a beat may carry: far beyond any pair's life (a takeover a second for
#: 136 years), far below where a u64 overflows in `epoch + 1`.
MAX_EPOCH = 2**32


def stamped(message: Heartbeat, received_at: float = 0.0) -> Heartbeat:
    """`message` as it leaves now: stamped with this host's monotonic clock and, when it echoes
    a beat that arrived at `received_at` (same clock), how long that beat was held."""
    now = time.monotonic()
    held = max(0.0, now - received_at) if message.echo > 0 else 0.0
    return msgspec.structs.replace(message, sent_at=now, held=held)


def round_trip_s(beat: Heartbeat, arrived: float) -> float | None:
    """The round trip (s) a beat measures, arriving at `arrived` (our monotonic clock): from our
    beat it echoes leaving to this one arriving, less the time the peer held ours. None when it
    echoes nothing, or the result is negative or not finite (not our clock's: no measurement)."""
    if beat.echo <= 0:
        return None
    rtt = arrived - beat.echo - beat.held
    return rtt if 0 <= rtt < math.inf else None


def check_beat(beat: Heartbeat, peer_id: str) -> Refused | None:
    """Why an authenticated beat must not count, if it must not (another node, role, epoch)."""
    if beat.node_id != peer_id:
        return Refused("foreign", f"beat names node {beat.node_id!r} in {peer_id!r}'s session")
    if beat.role not in ROLES:
        return Refused("undecodable", f"unknown role {beat.role!r}")
    if not 0 <= beat.epoch <= MAX_EPOCH or beat.released < 0:
        return Refused("undecodable", f"epoch {beat.epoch} or released {beat.released} out of range")
    return None


#: Seconds the beat process may take to start (an interpreter and a few imports: ~0.2 s).
BEATER_START_TIMEOUT_S = 10.0

log = logging.getLogger("sipshadow.detect")
throttled = ThrottledLog(log)


#: How long a late beat keeps the detection window wide.
JITTER_MEMORY_S = 10.0
#: The window widens to twice the peer's worst recent gap: room for a gap a little worse than any seen.
JITTER_MARGIN = 2.0
#: Default cap of the widened window, as a multiple of `interval * misses`.
MAX_WIDENING = 1.5
#: For this many intervals after it is first heard, the peer gets the capped window: its lateness
#: is not known yet, and a node that starts (or rejoins with a state transfer) is at its busiest.
WARMUP_INTERVALS = 50


class SilenceWindow:
    """How long the peer may stay silent before it is declared dead: pure arithmetic, no I/O.

    `misses` intervals, or `JITTER_MARGIN` times the longest gap between the peer's beats in the
    last `memory_s` if that is longer, but never more than `max_s`. A loaded peer sends late;
    widening with the lateness actually seen (an accrual detector in its simplest form) keeps it
    from being declared dead, while a quiet pair keeps the tight window and the cap bounds the
    detection time whatever happened. Until the peer has been heard for `warmup_s` (since it
    was first heard, or heard again after `lost()`) its lateness is unknown and the window is
    `max_s`: a node starting or rejoining, with its state transfer, is at its slowest then.
    A peer that never stamps its beats keeps that window (none of its gaps can be measured).

    Gaps are measured between the *send* times the peer stamps on its beats (its own monotonic
    clock, s), not between our reads: when our loop stalls, the beats queue in the socket buffer
    and are read together, and the stall would pass for the peer's jitter. A stamp no later than
    the latest one (a reordered or replayed datagram) is ignored; `lost()` clears the reference,
    so a peer that comes back, perhaps on another clock, measures no gap across its absence.
    `now` is our own clock (s); it only ages what is remembered.
    """

    def __init__(
        self, interval_s: float, misses: int, max_s: float | None = None, memory_s: float = JITTER_MEMORY_S
    ) -> None:
        self.base_s = interval_s * misses
        self.max_s = max(self.base_s, max_s if max_s is not None else MAX_WIDENING * self.base_s)
        self.memory_s = memory_s
        self.warmup_s = WARMUP_INTERVALS * interval_s
        self._last_sent: float | None = None
        self._heard_since: float | None = None
        # (our time, gap) of the gaps that can still be the worst: gaps decreasing, times rising,
        # so the first one not older than `memory_s` is the worst of that span (a sliding maximum).
        self._gaps: deque[tuple[float, float]] = deque()

    def beat(self, sent_at: float, now: float) -> float | None:
        """Note a beat the peer sent at `sent_at` (its clock); return the gap it measured, if any."""
        previous = self._last_sent
        if previous is not None and sent_at <= previous:
            return None
        self._last_sent = sent_at
        if previous is None:
            self._heard_since = now
            return None
        gap = sent_at - previous
        while self._gaps and self._gaps[-1][1] <= gap:
            self._gaps.pop()
        self._gaps.append((now, gap))
        return gap

    def lost(self) -> None:
        """The peer was declared dead: the silence up to its next beat is no jitter."""
        self._last_sent = self._heard_since = None

    def worst_gap_s(self, now: float) -> float:
        """The longest gap between the peer's beats in the last `memory_s` (s; 0.0 when none)."""
        while self._gaps and now - self._gaps[0][0] > self.memory_s:
            self._gaps.popleft()
        return self._gaps[0][1] if self._gaps else 0.0

    def window_s(self, now: float) -> float:
        """The silence (s) after which the peer is dead, as of `now`."""
        if self._heard_since is None or now - self._heard_since < self.warmup_s:
            return self.max_s
        return min(self.max_s, max(self.base_s, JITTER_MARGIN * self.worst_gap_s(now)))


class HeartbeatDetector(asyncio.DatagramProtocol):
    """Sends a beat every interval and watches the peer's; calls `on_peer_dead` once per loss.

    `max_window_s` caps how far the peer's lateness may widen the window (default
    `MAX_WIDENING` times `interval_s * misses`); it bounds the detection time. `on_stall`, if
    given, hears how long (s) our own beats stopped whenever they stopped for more than two
    intervals (the loop stood still past the beat process's stall limit: a freeze, SIGSTOP, a
    starved host), so the peer may have declared us dead meanwhile. `on_rtt`, if given, hears
    each round trip (s) to the peer that its beats measure (`round_trip_s`); the last one is
    kept in `last_rtt_s`.
    """

    def __init__(
        self,
        *,
        peering: Peering,
        peer: Address,
        interval_s: float,
        misses: int,
        beat: Callable[[], Heartbeat],
        on_peer_beat: Callable[[Heartbeat], None],
        on_peer_dead: Callable[[], None],
        max_window_s: float | None = None,
        on_stall: Callable[[float], None] | None = None,
        on_rtt: Callable[[float], None] | None = None,
    ) -> None:
        self.channel = DatagramChannel(CODEC, peering, nonce=secrets.token_bytes(NONCE_BYTES))
        self.peer = peer
        self.interval_s = interval_s
        self.misses = misses
        self.beat = beat
        self.on_peer_beat = on_peer_beat
        self.on_peer_dead = on_peer_dead
        self.on_stall = on_stall
        self.on_rtt = on_rtt
        self.last_rtt_s: float | None = None
        self.last_peer_beat: Heartbeat | None = None
        self.last_seen: float | None = None
        self.peer_alive = False
        self.refused = 0
        self.stalls = 0
        self.window = SilenceWindow(interval_s, misses, max_window_s)
        self._answered_at = float("-inf")
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._beater: Beater | None = None
        self._sealing: Session | None = None  #: the session the beat process seals with
        self._beater_ready = asyncio.Event()
        #: The peer's last stamped beat: its `sent_at` and when it arrived (our monotonic clock).
        self._echo: tuple[float, float] = (0.0, 0.0)
        self._measured_echo = 0.0  #: the echo of our last round trip measured: one per beat of ours

    async def start(self, listen: Address) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=listen)
        self._beater = Beater(self.peer, listen[0], self.interval_s)
        loop.add_reader(self._beater.fileno(), self._beater_said)
        self._task = asyncio.create_task(self._run())
        try:  # a node listens for its peer only once it can answer with beats
            await asyncio.wait_for(self._beater_ready.wait(), BEATER_START_TIMEOUT_S)
        except TimeoutError:
            log.error("the beat process did not start within %.0f s: beating may be late", BEATER_START_TIMEOUT_S)

    def _beater_said(self) -> None:
        assert self._beater is not None
        for what, seconds in self._beater.reports():
            if what == "ready":
                self._beater_ready.set()
            elif what == "stalled" and self.on_stall is not None:
                self.on_stall(seconds)

    def _tick(self) -> None:
        """Once per loop turn: the beat process gets the latest beat (and the session, when it
        changed); with no session yet, the peer gets an Offer."""
        beater, session = self._beater, self.channel.session
        if beater is None:
            return
        if session is not self._sealing:
            self._sealing = session
            beater.session(session)
        message = self.beat()
        beater.beat((message.node_id, message.epoch, message.role, message.released), *self._echo)
        if session is None and self._transport is not None:
            self._transport.sendto(self.channel.offer(), self.peer)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        arrived = time.monotonic()  # not the loop's time: uvloop's has a 1 ms resolution
        received = self.channel.receive(data)
        now = asyncio.get_running_loop().time()
        if received.write and self._transport is not None and now - self._answered_at >= self.interval_s:
            self._answered_at = now  # one answer per interval: replayed offers amplify nothing
            self._transport.sendto(received.write, addr)
        session = self.channel.session
        if session is not None and session is not self._sealing and self._beater is not None:
            self._tick()  # a new session: the beat process seals with it and beats at once,
            self._beater.now()  # so the peer adopts it within a round trip, not a window
        for message in received.messages:
            refused = check_beat(message, session.peer_id) if session is not None else Refused("out_of_session")
            if refused is not None:
                self._refuse(self.channel.peering.refuse(refused), addr)
            else:
                self._heard(message, now, arrived)
        if received.refused is not None:
            self._refuse(received.refused, addr)

    def _refuse(self, refused: Refused, addr: tuple[str, int]) -> None:
        self.refused += 1
        throttled.refusal("beat", f"heartbeat frame from {addr[0]}:{addr[1]}", refused, self.channel.peering)

    def _heard(self, message: Heartbeat, now: float, arrived: float) -> None:
        if message.sent_at > 0:
            self._measure(message.sent_at, now)
            self._echo = (message.sent_at, arrived)
        self._round_trip(message, arrived)
        self.last_seen = now
        self.last_peer_beat = message
        self.peer_alive = True
        self.on_peer_beat(message)

    def _measure(self, sent_at: float, now: float) -> None:
        """Feed the window; log each new worst gap that widens it (and say when the cap holds it)."""
        gap = self.window.beat(sent_at, now)
        if gap is not None and gap == self.window.worst_gap_s(now) and JITTER_MARGIN * gap > self.window.base_s:
            window = self.window.window_s(now)
            capped = " (capped)" if JITTER_MARGIN * gap > window else ""
            log.info("peer %s:%d beat %.0f ms after the last: detection window %.0f ms%s", *self.peer,
                     gap * 1000, window * 1000, capped)  # fmt: skip

    def _round_trip(self, message: Heartbeat, arrived: float) -> None:
        """Measure the round trip once per beat of ours the peer echoes (it may echo one twice)."""
        if message.echo == self._measured_echo:
            return
        rtt = round_trip_s(message, arrived)
        if rtt is None:
            return
        self._measured_echo = message.echo
        self.last_rtt_s = rtt
        if self.on_rtt is not None:
            self.on_rtt(rtt)

    @property
    def window_s(self) -> float:
        """Silence that means death now (s): see `SilenceWindow`."""
        return self.window.window_s(asyncio.get_running_loop().time())

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the peer is down: silence says the same

    def send_now(self) -> None:
        """A beat now (an Offer while no session is up)."""
        self._tick()
        if self._beater is not None and self.channel.session is not None:
            self._beater.now()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_tick = loop.time()
        while True:
            self._tick()
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            if now - last_tick > 2 * self.interval_s:
                # Our own loop was stalled (CPU starvation): the peer's beats may be waiting in the
                # socket buffer. Judge silence only after a turn in which we were listening.
                self.stalls += 1
                last_tick = now
                continue
            last_tick = now
            silent_for = now - self.last_seen if self.last_seen is not None else 0.0
            if self.peer_alive and silent_for > self.window.window_s(now):
                self.peer_alive = False
                self.window.lost()
                log.warning("peer %s:%d silent for %.0f ms: declared dead", *self.peer, silent_for * 1000)
                self.on_peer_dead()

    def close(self) -> None:
        if self._beater is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._beater.fileno())
            self._beater.close()
            self._beater = None
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()
