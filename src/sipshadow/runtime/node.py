"""The asyncio UDP node: one socket on the service address, the core, and its one timer.

The endpoint's callback hands each datagram straight to the core in arrival order (one
ordered input stream, which is what replication records), sends what the core returns, and
keeps a single `call_at` armed at the core's next deadline (aioquic's pattern).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from sipshadow.core import DatagramReceived, Event, Gateway, TimerExpired
from sipshadow.core.actions import Address, SendDatagram
from sipshadow.replication.primary import PrimaryReplicator
from sipshadow.runtime.status import snapshot

log = logging.getLogger("sipshadow.node")

SOCKET_BUFFER_BYTES = 8 * 1024 * 1024


def bind_udp(address: Address) -> socket.socket:
    """A UDP socket with buffers big enough to ride out bursts at thousands of calls/s."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
    sock.bind(address)
    sock.setblocking(False)
    return sock


class DatagramEndpoint(asyncio.DatagramProtocol):
    """The service socket's protocol; its handler changes hands at takeover (tap -> node)."""

    def __init__(self, handler: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.handler = handler
        self.errors = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.handler(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1  # ICMP errors for earlier sends: counted, never fatal


async def open_endpoint(
    listen: Address, handler: Callable[[bytes, tuple[str, int]], None]
) -> tuple[asyncio.DatagramTransport, DatagramEndpoint]:
    loop = asyncio.get_running_loop()
    endpoint = DatagramEndpoint(handler)
    transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, sock=bind_udp(listen))
    return transport, endpoint


class Node:
    """Wires a Gateway to a socket and the loop clock; makes no decisions of its own."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.internal_errors = 0
        self.sent_datagrams = 0
        #: On a primary, every event goes through the replicator, which decides when to send.
        self.replicator: PrimaryReplicator | None = None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._endpoint: DatagramEndpoint | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._started_at = time.monotonic()

    async def start(self, listen: Address) -> None:
        self.adopt(*await open_endpoint(listen, self.on_datagram))
        log.info("serving on %s:%d, members %s", *listen, self.gateway.members)

    def adopt(self, transport: asyncio.DatagramTransport, endpoint: DatagramEndpoint) -> None:
        """Serve on an already bound socket (the shadow's tap socket, at takeover)."""
        endpoint.handler = self.on_datagram
        self._transport, self._endpoint = transport, endpoint
        self._rearm()

    @property
    def send_errors(self) -> int:
        return self._endpoint.errors if self._endpoint is not None else 0

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        self._take(DatagramReceived(data, source[:2], self._loop.time()))
        armed = self._timer_at
        wanted = self.gateway.next_deadline()
        if wanted is not None and (armed is None or wanted < armed):
            self._rearm()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._take(TimerExpired(self._loop.time()))
        self._rearm()

    def _take(self, event: Event) -> None:
        try:
            outputs = self.gateway.handle(event)
        except Exception:
            self.internal_errors += 1
            log.exception("core failed on %s; dropped", type(event).__name__)
            outputs = []
        if self.replicator is not None:
            self.replicator.record(event, outputs)
        else:
            self.send(outputs)

    def send(self, outputs: list[SendDatagram]) -> None:
        transport = self._transport
        if transport is None:
            return
        self.sent_datagrams += len(outputs)
        for data, destination in outputs:
            transport.sendto(data, destination)

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.gateway.next_deadline()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)

    def status(self) -> dict[str, object]:
        extra = {"internal_errors": self.internal_errors, "send_errors": self.send_errors}
        if self.replicator is not None:
            extra["replication"] = {"seq": self.replicator.seq, "released": self.replicator.released,
                                    "shadow_attached": self.replicator.attached, **self.replicator.stats}  # fmt: skip
        return snapshot(self.gateway, started_at=self._started_at, now=time.monotonic(), extra=extra)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
