"""The shadow's replication shell: keeps a TCP connection to the primary and runs a `Follower`.

It decides nothing: it reconnects after a loss (every connection starts with a handshake,
then a snapshot), feeds the follower the opened messages and the tapped datagrams with the
loop's `now`, seals and writes what the follower returns, drops the link when told to or when
a frame is refused, and arms the follower's one timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

from sipshadow.core.actions import Address
from sipshadow.detect.throttle import ThrottledLog
from sipshadow.link import NONCE_BYTES, Peering, StreamChannel
from sipshadow.replication.effects import Effects
from sipshadow.replication.follower import Follower
from sipshadow.replication.wire import CODEC, Handoff, HandoffRequest
from sipshadow.runtime.primary_link import set_nodelay

log = logging.getLogger("sipshadow.replication")
throttled = ThrottledLog(log)


class ShadowLink(asyncio.Protocol):
    """Keeps `follower` in step with the primary at `peer`."""

    def __init__(
        self, follower: Follower, peer: Address, *, peering: Peering, epoch: Callable[[], int], retry_s: float = 0.05
    ) -> None:
        self.follower = follower
        self.peer = peer
        self.peering = peering
        self.epoch = epoch
        self.retry_s = retry_s
        self._transport: asyncio.Transport | None = None
        self._channel = self._new_channel()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        #: Called (once, on the loop) when the primary hands off: a planned switchover.
        self.on_handoff: Callable[[Handoff], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        while True:
            try:
                await self._loop.create_connection(lambda: self, *self.peer)
            except OSError:
                await asyncio.sleep(self.retry_s)
                continue
            await self._lost.wait()
            await asyncio.sleep(self.retry_s)

    def _new_channel(self) -> StreamChannel:
        return StreamChannel(CODEC, self.peering, nonce=secrets.token_bytes(NONCE_BYTES), initiator=True)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._lost.clear()
        self._channel = self._new_channel()
        set_nodelay(transport)
        transport.write(self._channel.offer())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        received = self._channel.feed(data)
        if received.ready:
            self.execute(self.follower.connected(self.epoch()))
        for message in received.messages:
            self.execute(self.follower.receive(message, self._loop.time()))
        refused = received.refused
        if refused is not None:
            self.follower.stats["refused_frames"] += 1
            throttled.refusal("shadow", "replication frame from the primary (reconnecting)", refused, self.peering)
            self.drop()

    def tapped(self, data: bytes, source: Address) -> None:
        """A copy of a datagram sent to the primary, from the switch's mirror."""
        self.execute(self.follower.tapped(data, source, self._loop.time()))

    def execute(self, effects: Effects) -> None:
        """Carry out the follower's orders, then re-arm its timer."""
        if effects.write and self._transport is not None and self._channel.established:
            self._transport.write(self._channel.seal(effects.write))
        if effects.drop:
            log.error("shadow %s", effects.drop)
            self.drop()
        on_handoff = self.on_handoff
        if self.follower.handoff is not None and on_handoff is not None:
            self.on_handoff = None  # once: the takeover it starts closes this link
            self._loop.call_soon(on_handoff, self.follower.handoff)
        deadline = self.follower.next_deadline()
        if deadline is not None and self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def request_handoff(self, reason: str) -> bool:
        """Ask the primary to hand off; False when there is no session to ask on."""
        if self._transport is None or not self._channel.established or not self.follower.synced:
            return False
        self._transport.write(self._channel.seal([HandoffRequest(reason)]))
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self.execute(self.follower.on_deadline(self._loop.time()))

    def drop(self) -> None:
        """Close the connection; the retry loop reconnects and the snapshot repairs the state."""
        self.follower.disconnected()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._channel.pending_bytes and self._channel.established:
            self.follower.stats["refused_frames"] += 1
            log.warning("primary connection closed inside a frame: truncated frame refused")
        self._transport = None
        self.follower.disconnected()
        self._lost.set()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.drop()
