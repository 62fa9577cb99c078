"""UDP heartbeats both ways, HMAC'd; the peer is dead after `misses` intervals of silence.

Each beat also carries the sender's role, epoch and released sequence number, so the shadow
learns how far the primary has sent outputs even when no log traffic flows, and a node that
starts while a primary already serves learns it must join as the shadow.

Beats leave from a small thread, not from the event loop: a loop busy for tens of ms (a
state-transfer snapshot, a burst of traffic) must not look like a dead node and start a
takeover against a live primary. The thread beats only while the loop has turned within
`LOOP_STALL_LIMIT_S`, so a wedged node still falls silent and is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import msgspec

from sipshadow.core.actions import Address
from sipshadow.link import FrameCodec, FrameDecoder, Refused


class Heartbeat(msgspec.Struct, array_like=True, tag=5):
    """One UDP datagram on the heartbeat link: who I am, my role, how far I have released."""

    node_id: str
    epoch: int
    role: str
    released: int


#: Heartbeats are frame kind 5 of the pair's format; a datagram holds one, well under 4 KiB.
CODEC = FrameCodec({Heartbeat: 5}, Heartbeat, 4096)


def encode(message: Heartbeat, key: bytes) -> bytes:
    return CODEC.encode(message, key)


log = logging.getLogger("sipshadow.detect")


#: How long the event loop may go without a turn before this node stops vouching for itself.
LOOP_STALL_LIMIT_S = 2.0
#: How long a late beat keeps the detection window wide.
JITTER_MEMORY_S = 10.0


class HeartbeatDetector(asyncio.DatagramProtocol):
    """Sends a beat every interval and watches the peer's; calls `on_peer_dead` once per loss."""

    def __init__(
        self,
        *,
        key: bytes,
        peer: Address,
        interval_s: float,
        misses: int,
        beat: Callable[[], Heartbeat],
        on_peer_beat: Callable[[Heartbeat], None],
        on_peer_dead: Callable[[], None],
    ) -> None:
        self.key = key
        self.peer = peer
        self.interval_s = interval_s
        self.misses = misses
        self.beat = beat
        self.on_peer_beat = on_peer_beat
        self.on_peer_dead = on_peer_dead
        self.last_peer_beat: Heartbeat | None = None
        self.last_seen: float | None = None
        self.peer_alive = False
        self.refused = 0
        self.stalls = 0
        self._worst_gap = 0.0
        self._worst_gap_at = 0.0
        self._decoder = FrameDecoder(CODEC, key)
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._frame = b""
        self._loop_turned_at = time.monotonic()
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None

    async def start(self, listen: Address) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=listen)
        self._frame = encode(self.beat(), self.key)
        self._task = asyncio.create_task(self._run())
        sock = socket.socket(socket.AF_INET6 if ":" in listen[0] else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((listen[0], 0))
        self._sender = threading.Thread(target=self._beat_forever, args=(sock,), name="heartbeat", daemon=True)
        self._sender.start()

    def _beat_forever(self, sock: socket.socket) -> None:
        """The sender thread: the latest beat, every interval, while the loop is alive."""
        with sock:
            while not self._stop.wait(self.interval_s):
                if time.monotonic() - self._loop_turned_at < LOOP_STALL_LIMIT_S:
                    with contextlib.suppress(OSError):  # no route while a link is down: silence says the same
                        sock.sendto(self._frame, self.peer)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        message = self._decoder.open_datagram(data)
        if isinstance(message, Refused) or not isinstance(message, Heartbeat):
            self.refused += 1
            log.warning("refused a heartbeat from %s: %s", addr, getattr(message, "reason", "not a heartbeat"))
            return
        now = asyncio.get_running_loop().time()
        if self.last_seen is not None:
            self._note_gap(now - self.last_seen, now)
        self.last_seen = now
        self.last_peer_beat = message
        self.peer_alive = True
        self.on_peer_beat(message)

    def _note_gap(self, gap: float, now: float) -> None:
        """Remember the longest gap between the peer's beats over the last `JITTER_MEMORY_S`."""
        if gap >= self._worst_gap or now - self._worst_gap_at > JITTER_MEMORY_S:
            self._worst_gap, self._worst_gap_at = gap, now

    @property
    def window_s(self) -> float:
        """Silence that means death: `misses` intervals, or twice the worst recent gap if longer.

        A loaded host delivers beats late; widening the window with the jitter actually seen
        (an accrual detector in its simplest form) keeps a slow peer from being declared dead,
        while a quiet pair keeps the tight window.
        """
        return max(self.interval_s * self.misses, 2 * self._worst_gap)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the peer is down: silence says the same

    def send_now(self) -> None:
        if self._transport is not None:
            self._transport.sendto(encode(self.beat(), self.key), self.peer)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_tick = loop.time()
        while True:
            self._loop_turned_at = time.monotonic()
            self._frame = encode(self.beat(), self.key)
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
            if self.peer_alive and silent_for > self.window_s:
                self.peer_alive = False
                log.warning("peer %s:%d silent for %.0f ms: declared dead", *self.peer, silent_for * 1000)
                self.on_peer_dead()

    def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()
