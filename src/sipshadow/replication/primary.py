"""The primary's side of replication: log every event, ship it, hold outputs until acked.

Output commit (§ "Replication" in DESIGN.md): the datagrams an event produced leave only once
the shadow has acknowledged that event's log entry, so the shadow never knows less than the
world has seen. A shadow that stops acknowledging for `commit_timeout_s` is declared dead:
the held outputs go out and the primary runs solo, loudly. Entries are batched per loop
turn; nothing is kept once acknowledged, and nothing is logged while no shadow is attached.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable

from sipshadow.core import DatagramReceived, Event, Gateway, SendDatagram
from sipshadow.determinism import RecordingEntropy
from sipshadow.replication.log import LogEntry, entry_for
from sipshadow.replication.wire import (
    Ack,
    Entries,
    FrameDecoder,
    Hello,
    PayloadRequest,
    Payloads,
    Refused,
    Snapshot,
    SnapshotRows,
    StreamLost,
    encode,
)

log = logging.getLogger("sipshadow.replication")

Sender = Callable[[list[SendDatagram]], None]
SNAPSHOT_ROWS_PER_FRAME = 2000


class PrimaryReplicator:
    """Sits between the core and the socket on the primary."""

    def __init__(
        self,
        gateway: Gateway,
        recorder: RecordingEntropy,
        send: Sender,
        *,
        key: bytes,
        epoch: int,
        start_seq: int = 0,
        output_commit: bool = True,
        commit_timeout_s: float = 0.2,
        with_payload: bool = True,
    ) -> None:
        self.gateway = gateway
        self.recorder = recorder
        self.send = send
        self.key = key
        self.epoch = epoch
        self.seq = start_seq
        self.released = start_seq
        self.acked = start_seq
        self.output_commit = output_commit
        self.commit_timeout_s = commit_timeout_s
        self.with_payload = with_payload
        self.stats: dict[str, float] = dict.fromkeys(
            ("entries_sent", "frames_sent", "acks", "refused_frames", "snapshots_sent", "shadow_losses",
             "commit_timeouts", "last_snapshot_ms", "payloads_sent", "release_errors"), 0
        )  # fmt: skip
        self.connection: ShadowConnection | None = None
        self._batch: list[LogEntry] = []
        self._flush_scheduled = False
        self._pending: deque[tuple[int, float, list[SendDatagram]]] = deque()
        # Tap mode: the datagrams of entries the shadow has not acknowledged, in case it asks.
        self._payloads: deque[tuple[int, bytes]] = deque()
        self._deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def attached(self) -> bool:
        return self.connection is not None

    # -- the event path -------------------------------------------------------------------

    def record(self, event: Event, outputs: list[SendDatagram]) -> None:
        """Called after the core handled `event`; decides when its outputs may leave."""
        self.seq += 1
        draws = self.recorder.take()
        if self.connection is None:
            self.released = self.seq
            self._release(outputs)
            return
        state = self.gateway.state_digest()
        self._batch.append(entry_for(self.seq, event, draws, state, with_payload=self.with_payload))
        if not self.with_payload and isinstance(event, DatagramReceived):
            self._payloads.append((self.seq, event.data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if not self.output_commit:
            self.released = self.seq
            self._release(outputs)
        elif outputs:
            self._pending.append((self.seq, self._loop.time(), outputs))
            if self._deadline is None:
                self._deadline = self._loop.call_later(self.commit_timeout_s, self._check_deadline)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._batch or self.connection is None:
            self._batch.clear()
            return
        self.connection.write(encode(Entries(self._batch, self.released), self.key))
        self.stats["entries_sent"] += len(self._batch)
        self.stats["frames_sent"] += 1
        self._batch = []

    # -- acknowledgements and the commit deadline -----------------------------------------

    def on_ack(self, seq: int) -> None:
        self.stats["acks"] += 1
        self.acked = max(self.acked, seq)
        pending = self._pending
        while pending and pending[0][0] <= seq:
            self._release(pending.popleft()[2])
        self.released = max(self.released, seq)
        payloads = self._payloads
        while payloads and payloads[0][0] <= seq:
            payloads.popleft()

    def on_payload_request(self, request: PayloadRequest) -> None:
        if self.connection is None:
            return
        wanted = set(request.seqs)
        items = [(seq, data) for seq, data in self._payloads if seq in wanted]
        self.stats["payloads_sent"] += len(items)
        self.connection.write(encode(Payloads(items), self.key))

    def _check_deadline(self) -> None:
        self._deadline = None
        if not self._pending:
            return
        waited = self._loop.time() - self._pending[0][1]
        if waited < self.commit_timeout_s:
            self._deadline = self._loop.call_later(self.commit_timeout_s - waited, self._check_deadline)
            return
        self.stats["commit_timeouts"] += 1
        log.error("shadow did not acknowledge for %.0f ms: declared dead, running SOLO", waited * 1000)
        if self.connection is not None:
            self.connection.close()
        self.detach(self.connection)

    def release_all(self) -> None:
        while self._pending:
            self._release(self._pending.popleft()[2])
        self.released = self.seq

    def _release(self, outputs: list[SendDatagram]) -> None:
        """Let outputs go; a failing send must never reach the replication link's callbacks."""
        try:
            self.send(outputs)
        except Exception:
            self.stats["release_errors"] += 1
            log.exception("sending %d released datagrams failed; dropped", len(outputs))

    # -- the shadow's connection ----------------------------------------------------------

    def attach(self, connection: ShadowConnection, hello: Hello) -> None:
        """A shadow said hello: send it a snapshot and stream entries from there."""
        if self.connection is not None and self.connection is not connection:
            self.connection.close()
            self.detach(self.connection)
        self._flush()
        self.release_all()
        self._payloads.clear()
        started = time.perf_counter()
        state = self.gateway.export_state()
        rows = state.pop("dialogs")
        parts = [
            rows[index : index + SNAPSHOT_ROWS_PER_FRAME] for index in range(0, len(rows), SNAPSHOT_ROWS_PER_FRAME)
        ]
        frames = [encode(Snapshot(self.seq, self.epoch, state, len(parts)), self.key)]
        frames += [encode(SnapshotRows(part), self.key) for part in parts]
        connection.write(b"".join(frames))
        pause_ms = (time.perf_counter() - started) * 1000
        self.connection = connection
        self.acked = self.seq
        self.stats["snapshots_sent"] += 1
        self.stats["last_snapshot_ms"] = round(pause_ms, 2)
        log.info(
            "shadow %s attached at entry %d (snapshot of %d dialogs in %d frames, %.1f ms)",
            hello.node_id,
            self.seq,
            len(rows),
            len(frames),
            pause_ms,
        )

    def detach(self, connection: ShadowConnection | None) -> None:
        if connection is None or connection is not self.connection:
            return
        self.connection = None
        self._batch.clear()
        self._payloads.clear()
        self.release_all()
        self.stats["shadow_losses"] += 1
        log.warning("shadow lost: running SOLO until a shadow rejoins")

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self.connection is not None:
            self.connection.close()
        self.release_all()


class ShadowConnection(asyncio.Protocol):
    """The primary's end of one shadow's TCP connection."""

    def __init__(self, replicator: PrimaryReplicator) -> None:
        self.replicator = replicator
        self.decoder = FrameDecoder(replicator.key)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            for message in self.decoder.feed(data):
                if isinstance(message, Refused):
                    self.replicator.stats["refused_frames"] += 1
                    log.warning("refused a frame from the shadow: %s", message.reason)
                elif isinstance(message, Ack):
                    if self.replicator.connection is self:
                        self.replicator.on_ack(message.seq)
                elif isinstance(message, Hello):
                    self.replicator.attach(self, message)
                elif isinstance(message, PayloadRequest) and self.replicator.connection is self:
                    self.replicator.on_payload_request(message)
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
            self.replicator.stats["refused_frames"] += 1
            log.warning("shadow connection closed inside a frame: truncated frame refused")
        self.replicator.detach(self)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Output commit waits on the round trip: never let Nagle hold a frame back."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
