"""The shadow's side of replication: connect, take a snapshot, replay the log, acknowledge.

The connection is kept up by a retry loop; every (re)connection starts with a snapshot, so a
divergence, a refused frame that left a gap, or a restart all heal the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sipshadow.core import SendDatagram
from sipshadow.replication.primary import set_nodelay
from sipshadow.replication.replica import Divergence, Replica
from sipshadow.replication.wire import Ack, Entries, FrameDecoder, Hello, Refused, Snapshot, StreamLost, encode

log = logging.getLogger("sipshadow.replication")

Address = tuple[str, int]


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
        retry_s: float = 0.05,
    ) -> None:
        self.replica = replica
        self.peer = peer
        self.key = key
        self.node_id = node_id
        self.epoch = epoch
        self.gate = gate
        self.retry_s = retry_s
        self.synced = False
        self.primary_epoch = 0
        self.stats = {"snapshots": 0, "entries_applied": 0, "refused_frames": 0, "divergences": 0, "connects": 0}
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(key)
        self._lost: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
            self.replica.restore(message.seq, message.state)
            self.primary_epoch = message.epoch
            self.synced = True
            self.stats["snapshots"] += 1
            log.info("state transfer: snapshot at entry %d (%d dialogs)", message.seq, len(self.replica.gateway.table))
            self._ack()
        elif isinstance(message, Entries) and self.synced:
            apply = self.replica.apply
            for entry in message.entries:
                self.gate(apply(entry))
            self.stats["entries_applied"] += len(message.entries)
            self.replica.released(message.released)
            self._ack()

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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.drop()
