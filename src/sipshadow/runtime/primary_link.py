"""The primary's replication shell: runs a `Recorder` on the loop and serves shadows over TCP.

It decides nothing: it batches the recorder's entries once per loop turn, arms one timer at
the recorder's commit deadline, encodes and writes the messages the recorder returns, and
sends the outputs it releases.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from sipshadow.core import Event, SendDatagram
from sipshadow.replication.effects import Effects
from sipshadow.replication.recorder import Recorder
from sipshadow.replication.wire import FrameDecoder, Hello, Message, Refused, StreamLost, encode
from sipshadow.runtime.status import ReplicationStatus

log = logging.getLogger("sipshadow.replication")

Sender = Callable[[list[SendDatagram]], None]


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Output commit waits on the round trip: never let Nagle hold a frame back."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PrimaryLink:
    """Sits between the core and the service socket on the primary."""

    def __init__(self, recorder: Recorder, send: Sender, *, key: bytes) -> None:
        self.recorder = recorder
        self.send = send
        self.key = key
        self.connection: ShadowConnection | None = None
        self.refused_frames = 0
        self.release_errors = 0
        self.last_snapshot_ms = 0.0
        self._flush_scheduled = False
        self._deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def record(self, event: Event, outputs: list[SendDatagram]) -> None:
        """The core handled `event`: log it, and send what output commit lets out now."""
        recorder = self.recorder
        released = recorder.record(event, outputs)
        if released:
            self._release(released)
        if recorder.attached:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
            if self._deadline is None:
                self._arm()

    def _flush(self) -> None:
        self._flush_scheduled = False
        frame = self.recorder.take_entries()
        if frame is not None and self.connection is not None:
            self.connection.write(encode(frame, self.key))

    def _arm(self) -> None:
        deadline = self.recorder.next_deadline()
        if deadline is not None:
            self._deadline = self._loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        self.execute(self.recorder.on_deadline(self._loop.time()))
        if self.recorder.attached:
            self._arm()

    def execute(self, effects: Effects) -> None:
        """Carry out the recorder's orders: send, write to the shadow, drop its link."""
        if effects.send:
            self._release(effects.send)
        if effects.write and self.connection is not None:
            self.connection.write(b"".join(encode(message, self.key) for message in effects.write))
        if effects.drop:
            log.error("%s: shadow declared dead, running SOLO", effects.drop)
            self.shadow_gone()

    def _release(self, outputs: list[SendDatagram]) -> None:
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
        self.execute(self.recorder.receive(hello))
        self.last_snapshot_ms = round((time.perf_counter() - started) * 1000, 2)
        log.info("shadow %s attached at entry %d (snapshot in %.1f ms)", hello.node_id, self.recorder.seq,
                 self.last_snapshot_ms)  # fmt: skip

    def received(self, connection: ShadowConnection, message: Message | Refused) -> None:
        if isinstance(message, Refused):
            self.refused_frames += 1
            log.warning("refused a frame from the shadow: %s", message.reason)
        elif isinstance(message, Hello):
            self.attach(connection, message)
        elif connection is self.connection:
            self.execute(self.recorder.receive(message))

    def detach(self, connection: ShadowConnection) -> None:
        """`connection` closed; if it was the shadow's, run solo."""
        if connection is self.connection:
            self.connection = None
            self._release(self.recorder.detach())
            log.warning("shadow lost: running SOLO until a shadow rejoins")

    def shadow_gone(self) -> None:
        """The shadow is dead (commit timeout, or silent on the heartbeat link): stop holding."""
        if self.connection is not None:
            self.connection.close()
            self.detach(self.connection)

    def status(self) -> ReplicationStatus:
        recorder = self.recorder
        return ReplicationStatus(seq=recorder.seq, released=recorder.released, shadow_attached=recorder.attached,
                                 **recorder.stats, refused_frames=self.refused_frames,
                                 release_errors=self.release_errors,
                                 last_snapshot_ms=self.last_snapshot_ms)  # fmt: skip

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
        if self.connection is not None:
            self.connection.close()


class ShadowConnection(asyncio.Protocol):
    """The primary's end of one shadow's TCP connection."""

    def __init__(self, link: PrimaryLink) -> None:
        self.link = link
        self.decoder = FrameDecoder(link.key)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            for message in self.decoder.feed(data):
                self.link.received(self, message)
        except StreamLost as error:
            log.warning("replication stream from the shadow lost: %s", error)
            self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.decoder.pending_bytes:
            self.link.refused_frames += 1
            log.warning("shadow connection closed inside a frame: truncated frame refused")
        self.link.detach(self)
