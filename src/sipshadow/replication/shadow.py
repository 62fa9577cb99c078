"""The shadow's side of replication: connect, take a snapshot, replay the log, acknowledge.

The connection is kept up by a retry loop; every (re)connection starts with a snapshot, so a
divergence, a refused frame that left a gap, or a restart all heal the same way.

In tap mode the entries carry digests, not payloads: each waits for its datagram from the
tap (`TapBuffer`), and after `payload_wait_s` the shadow asks the primary for the ones the
tap did not deliver. Entries are applied strictly in log order either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from sipshadow.core import SendDatagram
from sipshadow.core.actions import Address
from sipshadow.replication.log import DATAGRAM, LogEntry
from sipshadow.replication.primary import set_nodelay
from sipshadow.replication.replica import Divergence, Replica
from sipshadow.replication.tap import TapBuffer
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


class ShadowLink(asyncio.Protocol):
    """Keeps a replica in step with the primary at `peer`."""

    def __init__(
        self,
        replica: Replica,
        peer: Address,
        *,
        key: bytes,
        node_id: str,
        epoch: Callable[[], int],
        gate: Callable[[list[SendDatagram]], None],
        tap: TapBuffer | None = None,
        retry_s: float = 0.05,
        payload_wait_s: float = 0.01,
    ) -> None:
        self.replica = replica
        self.peer = peer
        self.key = key
        self.node_id = node_id
        self.epoch = epoch
        self.gate = gate
        self.tap = tap
        self.retry_s = retry_s
        self.payload_wait_s = payload_wait_s
        self.synced = False
        self.primary_epoch = 0
        self.stats = {"snapshots": 0, "entries_applied": 0, "refused_frames": 0, "divergences": 0, "connects": 0,
                      "payload_requests": 0, "payloads_received": 0}  # fmt: skip
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(key)
        self._lost: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiting: deque[LogEntry] = deque()
        self._payloads: dict[int, bytes] = {}
        self._requested: set[int] = set()
        self._request_timer: asyncio.TimerHandle | None = None
        self._snapshot: Snapshot | None = None
        self._rows: list[object] = []
        self._parts = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.create_connection(lambda: self, *self.peer)
            except OSError:
                await asyncio.sleep(self.retry_s)
                continue
            await self._lost.wait()
            await asyncio.sleep(self.retry_s)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._lost.clear()
        self._decoder = FrameDecoder(self.key)
        self.synced = False
        self.stats["connects"] += 1
        set_nodelay(transport)
        transport.write(encode(Hello(self.node_id, self.epoch()), self.key))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            for message in self._decoder.feed(data):
                self._on_message(message)
        except StreamLost as error:
            log.warning("replication stream from the primary lost: %s", error)
            self.drop()
        except Divergence as error:
            self.stats["divergences"] += 1
            log.error("shadow diverged (%s): repairing by state transfer", error)
            self.drop()

    def _on_message(self, message: object) -> None:
        if isinstance(message, Refused):
            self.stats["refused_frames"] += 1
            log.warning("refused a frame from the primary: %s", message.reason)
        elif isinstance(message, Snapshot):
            self.synced = False
            self._snapshot, self._rows, self._parts = message, [], 0
            if message.parts == 0:
                self._restore()
        elif isinstance(message, SnapshotRows) and self._snapshot is not None:
            self._rows.extend(message.rows)
            self._parts += 1
            if self._parts == self._snapshot.parts:
                self._restore()
        elif isinstance(message, Entries) and self.synced:
            self._waiting.extend(message.entries)
            self.replica.released(message.released)
            self.drain()
        elif isinstance(message, Payloads):
            self.stats["payloads_received"] += len(message.items)
            self._payloads.update(message.items)
            self.drain()

    def _restore(self) -> None:
        """Every part of the snapshot is in: replace the replica's state and start replaying."""
        message, rows = self._snapshot, self._rows
        assert message is not None
        self._snapshot, self._rows, self._parts = None, [], 0
        self.replica.restore(message.seq, {"dialogs": rows, **message.state})
        self._waiting.clear()
        self._payloads.clear()
        self._requested.clear()
        if self.tap is not None:
            self.tap.clear()  # the snapshot covers every copy that arrived before it
        self.primary_epoch = message.epoch
        self.synced = True
        self.stats["snapshots"] += 1
        log.info("state transfer: snapshot at entry %d (%d dialogs)", message.seq, len(self.replica.gateway.table))
        self._ack()

    def drain(self) -> None:
        """Apply waiting entries in order while their payloads are at hand; then acknowledge."""
        waiting = self._waiting
        applied = 0
        while waiting:
            entry = waiting[0]
            payload = None
            if entry.kind == DATAGRAM and entry.payload is None:
                payload = self._payload_for(entry)
                if payload is None:
                    self._schedule_request()
                    break
            self.gate(self.replica.apply(entry, payload))
            waiting.popleft()
            applied += 1
        if applied:
            self.stats["entries_applied"] += applied
            self._ack()

    def _payload_for(self, entry: LogEntry) -> bytes | None:
        payload = self._payloads.pop(entry.seq, None)
        if payload is None and self.tap is not None and entry.payload_digest is not None:
            payload = self.tap.claim(entry.payload_digest, (entry.host, entry.port))
        return payload

    def _schedule_request(self) -> None:
        if self._request_timer is None:
            loop = asyncio.get_running_loop()
            self._request_timer = loop.call_later(self.payload_wait_s, self._request_missing)

    def _request_missing(self) -> None:
        self._request_timer = None
        missing = [
            entry.seq
            for entry in self._waiting
            if entry.kind == DATAGRAM and entry.payload is None and not self._at_hand(entry)
        ]
        try:
            self.drain()  # the tap may have delivered meanwhile
        except Divergence as error:
            self.stats["divergences"] += 1
            log.error("shadow diverged (%s): repairing by state transfer", error)
            self.drop()
            return
        if missing and self._transport is not None and self._waiting:
            self._requested.update(missing)
            self.stats["payload_requests"] += 1
            self._transport.write(encode(PayloadRequest(missing), self.key))

    def _at_hand(self, entry: LogEntry) -> bool:
        if entry.seq in self._payloads or entry.seq in self._requested:
            return True
        tap, digest = self.tap, entry.payload_digest
        return tap is not None and digest is not None and tap.has(digest, (entry.host, entry.port))

    def pending_entries(self) -> list[LogEntry]:
        return list(self._waiting)

    def _ack(self) -> None:
        if self._transport is not None:
            self._transport.write(encode(Ack(self.replica.applied_seq), self.key))

    def drop(self) -> None:
        """Close the connection; the retry loop reconnects and the snapshot repairs the state."""
        self.synced = False
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._decoder.pending_bytes:
            self.stats["refused_frames"] += 1
            log.warning("primary connection closed inside a frame: truncated frame refused")
        self._transport = None
        self.synced = False
        self._lost.set()

    async def close(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.drop()
