"""The primary's replication shell: runs a `Recorder` on the loop and serves shadows over TCP.

It decides nothing: it batches the recorder's entries once per loop turn, arms one timer at
the recorder's commit deadline, seals and writes the messages the recorder returns, and
sends the outputs it releases.

Every connection starts unauthenticated (`sipshadow.link.StreamChannel`): it must finish the
handshake within `HANDSHAKE_TIMEOUT_S`, at most `MAX_UNAUTHENTICATED` such connections are
kept (a new one closes the oldest), and it may announce no frame bigger than a handshake. Only
an authenticated shadow's Hello attaches it; a refused frame closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence

from sipshadow.core import Event, SendMessage
from sipshadow.core.actions import Address
from sipshadow.detect.throttle import ThrottledLog
from sipshadow.link import NONCE_BYTES, Peering, Refused, StreamChannel
from sipshadow.replication.effects import Effects
from sipshadow.replication.recorder import Recorder
from sipshadow.replication.streams import ConnectionBase
from sipshadow.replication.wire import CODEC, Ack, Handoff, HandoffRequest, Hello, Message
from sipshadow.runtime.status import ReplicationStatus

log = logging.getLogger("sipshadow.replication")
throttled = ThrottledLog(log)

#: How soon (s) the shadow hears of outputs released between entries frames: a busy primary's
#: next entries frame carries the mark anyway; a quiet one sends it alone, at most this late
#: and once per this interval (a frame per acknowledgement doubled the frames per call).
RELEASE_NOTICE_S = 0.005
#: Seconds a new connection has to authenticate before it is closed.
HANDSHAKE_TIMEOUT_S = 2.0
#: Connections still in their handshake; one more closes the oldest.
MAX_UNAUTHENTICATED = 8

Sender = Callable[[list[SendMessage]], None]


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection inside: a snapshot allocates rows for every dialog, and with the
    collector on, 65 000 dialogs cost 371 collections inside one loop turn, the longest 80 ms
    (benchmarks/heartbeat_stall.py). The collector runs again as soon as the block ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Output commit waits on the round trip: never let Nagle hold a frame back."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PrimaryLink:
    """Sits between the core and the service socket on the primary."""

    def __init__(self, recorder: Recorder, send: Sender, *, peering: Peering,
                 clock: Callable[[], float] | None = None) -> None:  # fmt: skip
        self.recorder = recorder
        self.send = send
        self.peering = peering
        self.connection: ShadowConnection | None = None
        self.unauthenticated: list[ShadowConnection] = []
        self.refused_frames = 0
        self.release_errors = 0
        self.last_snapshot_ms = 0.0
        #: perf_counter at the Hello of the state transfer under way (None: none under way).
        self._transfer_started: float | None = None
        self._joined_at_hello = 0.0
        self._flush_scheduled = False
        self._deadline: asyncio.TimerHandle | None = None
        self._notice: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        #: The event clock (the node's, `Node.now`): the recorder's times are its events'.
        self._clock: Callable[[], float] = clock or self._loop.time
        #: Called with each held output's commit delay (s) when the shadow's ack releases it.
        self.on_commit_delay: Callable[[float], None] | None = None
        #: Called when the attached shadow asks for a handoff (its reason).
        self.on_handoff_request: Callable[[str], None] | None = None

    def record(self, event: Event, outputs: list[SendMessage], stream_bytes: int = 0) -> None:
        """The core handled `event`: log it, and send what output commit lets out now."""
        recorder = self.recorder
        released = recorder.record(event, outputs, stream_bytes)
        if released:
            self._release(released)
        if recorder.attached:
            self._schedule_flush()
            if self._deadline is None:
                self._arm()

    def record_stream(self, peer: Address, base: ConnectionBase | None, now: float) -> None:
        """A TCP connection came up (`base`) or closed (None): logged in order with the messages."""
        self.recorder.record_stream(peer, base, now)
        if self.recorder.attached:
            self._schedule_flush()

    def flush_now(self) -> None:
        """Write what is logged now, not at the end of the turn (a handoff waits for its ack)."""
        self._flush()

    def hand_off(self, handoff: Handoff) -> None:
        """Tell the shadow to take over (after the last entry, which it has acknowledged)."""
        self._flush()
        if self.connection is not None:
            self.connection.write([handoff])

    def _schedule_flush(self) -> None:
        """One flush at the end of this loop turn, however many events and acks it holds."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _send_notice(self) -> None:
        self._notice = None
        self._flush()  # an entries frame, or an empty one carrying only the released mark

    def _flush(self) -> None:
        self._flush_scheduled = False
        recorder = self.recorder
        frames = recorder.take_frames()
        if frames and self.connection is not None:
            self.connection.write(frames)
        if recorder.exporting:
            self._schedule_flush()  # the snapshot's next rows, after this turn's other work
        elif self._transfer_started is not None and recorder.attached:
            self.last_snapshot_ms = round((time.perf_counter() - self._transfer_started) * 1000, 2)
            self._transfer_started = None
            log.info("snapshot sent in %.1f ms, entries follow", self.last_snapshot_ms)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        deadline = self.recorder.next_deadline()
        if deadline is not None:
            self._deadline = self._loop.call_later(max(0.0, deadline - self._clock()), self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        self.execute(self.recorder.on_deadline(self._clock()))
        if self.recorder.attached:
            self._arm()

    def execute(self, effects: Effects) -> None:
        """Carry out the recorder's orders: send, write to the shadow, drop its link."""
        if effects.send:
            self._release(effects.send)
            if self.recorder.attached and self._notice is None:  # tell the shadow the new released mark
                self._notice = self._loop.call_later(RELEASE_NOTICE_S, self._send_notice)
        if effects.write and self.connection is not None:
            self.connection.write(effects.write)
        if effects.lapse:  # from `on_deadline` only, whose caller re-arms for the join's deadline
            log.warning("%s: outputs no longer wait for it until it catches up", effects.lapse)
        if effects.drop:
            log.error("%s: shadow dropped, running SOLO", effects.drop)
            self.shadow_gone()

    def _release(self, outputs: list[SendMessage]) -> None:
        """Let outputs go; a failing send must never reach the replication link's callbacks."""
        try:
            self.send(outputs)
        except Exception:
            self.release_errors += 1
            log.exception("sending %d released datagrams failed; dropped", len(outputs))

    # -- the shadow's connection ----------------------------------------------------------

    def attach(self, connection: ShadowConnection, hello: Hello) -> None:
        """A shadow said hello on `connection`: it replaces any other, and gets a snapshot."""
        if self.connection is not None and self.connection is not connection:
            self.connection.close()
        self._flush()
        self.connection = connection
        started = time.perf_counter()
        with collection_paused():
            self.execute(self.recorder.receive(hello, self._clock()))
        self._transfer_started = started
        self._joined_at_hello = self._clock()
        self._schedule_flush()
        self._arm()  # the time the shadow has to catch up
        log.info("shadow %s attached at entry %d: snapshot under way, %.1f ms for the cut", hello.node_id,
                 self.recorder.seq, (time.perf_counter() - started) * 1000)  # fmt: skip

    def received(self, connection: ShadowConnection, message: Message) -> None:
        """An authenticated message on `connection` (a Hello must name the session's peer)."""
        if isinstance(message, Hello):
            session = connection.channel.session
            if session is None or message.node_id != session.peer_id:
                self.refuse(connection, Refused("foreign", f"Hello from {message.node_id!r} in another's session"))
                return
            self.attach(connection, message)
        elif connection is self.connection and isinstance(message, HandoffRequest):
            if self.on_handoff_request is not None:
                self.on_handoff_request(message.reason)
        elif connection is self.connection:
            recorder = self.recorder
            now = self._clock()
            if isinstance(message, Ack) and self.on_commit_delay is not None:
                for logged_at in recorder.pending_since(message.seq):
                    self.on_commit_delay(now - logged_at)
            joining = recorder.joining
            self.execute(recorder.receive(message, now))
            if joining and not recorder.joining:
                log.info("shadow caught up with the log at entry %d, %.0f ms after its hello: output commit on",
                         recorder.acked, (now - self._joined_at_hello) * 1000)  # fmt: skip
                self._arm()  # from the join's deadline to the held outputs' commit timeout

    def refuse(self, connection: ShadowConnection, refused: Refused) -> None:
        """A frame refused on `connection`: count, say so at a bounded rate, close it."""
        self.refused_frames += 1
        throttled.refusal("primary", f"replication connection from {connection.peer_name}", refused, self.peering)
        connection.close()

    def opened(self, connection: ShadowConnection) -> None:
        """A new, unauthenticated connection: cap how many wait, and how long."""
        self.unauthenticated.append(connection)
        if len(self.unauthenticated) > MAX_UNAUTHENTICATED:
            oldest = self.unauthenticated.pop(0)
            throttled.log(logging.WARNING, "primary crowded", "more than %d replication connections unauthenticated: "
                          "closing the oldest, from %s", MAX_UNAUTHENTICATED, oldest.peer_name)  # fmt: skip
            oldest.close()
        connection.deadline = self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_expired, connection)

    def authenticated(self, connection: ShadowConnection) -> None:
        if connection in self.unauthenticated:
            self.unauthenticated.remove(connection)
        if connection.deadline is not None:
            connection.deadline.cancel()

    def _handshake_expired(self, connection: ShadowConnection) -> None:
        if not connection.channel.established:
            self.refuse(connection, Refused("unexpected", f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s"))

    def detach(self, connection: ShadowConnection) -> None:
        """`connection` closed; if it was the shadow's, run solo."""
        self.authenticated(connection)  # no longer waiting, either way
        if connection is self.connection:
            self.connection = None
            self._release(self.recorder.detach())
            log.warning("shadow lost: running SOLO until a shadow rejoins")

    def shadow_silent(self) -> None:
        """The shadow fell silent on the heartbeat link: stop holding outputs for it. Its link
        stays: a shadow that was only busy catches up from the log, with no new snapshot."""
        recorder = self.recorder
        if recorder.attached and not recorder.joining:
            self._release(recorder.stop_waiting(self._clock()))
            log.warning("shadow silent on the heartbeat link: outputs no longer wait for it until it catches up")
            self._arm()

    def shadow_gone(self) -> None:
        """The shadow is dead (its link failed, or it never caught up): close its link."""
        if self.connection is not None:
            self.connection.close()
            self.detach(self.connection)

    def status(self) -> ReplicationStatus:
        recorder = self.recorder
        return ReplicationStatus(seq=recorder.seq, released=recorder.released, shadow_attached=recorder.attached,
                                 shadow_joining=recorder.joining, **recorder.stats, refused_frames=self.refused_frames,
                                 release_errors=self.release_errors,
                                 last_snapshot_ms=self.last_snapshot_ms, lag_entries=recorder.lag_entries,
                                 lag_bytes=recorder.lag_bytes)  # fmt: skip

    def abandon(self) -> None:
        """Stop without sending what is held: a newer primary owns these calls now."""
        self._stop()
        self.recorder.release_all()

    def close(self) -> None:
        """Stop, sending what is held (the node is shutting down)."""
        self._stop()
        self._release(self.recorder.release_all())

    def _stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._notice is not None:
            self._notice.cancel()
        if self.connection is not None:
            self.connection.close()
        for waiting in list(self.unauthenticated):
            waiting.close()


class ShadowConnection(asyncio.Protocol):
    """The primary's end of one (would-be) shadow's TCP connection."""

    def __init__(self, link: PrimaryLink) -> None:
        self.link = link
        self.channel = StreamChannel(CODEC, link.peering, nonce=secrets.token_bytes(NONCE_BYTES), initiator=False)
        self.transport: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.peer_name = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer_name = f"{peer[0]}:{peer[1]}" if peer else "?"
        set_nodelay(transport)
        self.link.opened(self)

    def data_received(self, data: bytes) -> None:
        was_established = self.channel.established
        received = self.channel.feed(data)
        if received.write and self.transport is not None:
            self.transport.write(received.write)
        if self.channel.established and not was_established:
            self.link.authenticated(self)
        for message in received.messages:
            self.link.received(self, message)
        if received.refused is not None:
            self.link.refuse(self, received.refused)

    def write(self, messages: Sequence[Message]) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.channel.established:
            self.transport.write(self.channel.seal(messages))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel.pending_bytes and self.channel.established:
            self.link.refused_frames += 1
            log.warning("shadow connection closed inside a frame: truncated frame refused")
        self.link.detach(self)
