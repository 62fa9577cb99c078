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
from pathlib import Path

from sipshadow.core import DatagramReceived, Gateway, TimerExpired
from sipshadow.core.actions import Address, SendDatagram
from sipshadow.runtime.status import snapshot, write_atomically

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


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, node: Node) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.node.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.node.send_errors += 1


class Node:
    """Wires a Gateway to a socket and the loop clock; makes no decisions of its own."""

    def __init__(self, gateway: Gateway, status_file: Path | None = None, status_interval_s: float = 1.0) -> None:
        self.gateway = gateway
        self.status_file = status_file
        self.status_interval_s = status_interval_s
        self.internal_errors = 0
        self.send_errors = 0
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._started_at = time.monotonic()

    async def start(self, listen: Address) -> None:
        sock = bind_udp(listen)
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _Endpoint(self), sock=sock)
        self._transport = transport
        self._rearm()
        log.info("serving on %s:%d, members %s", *listen, self.gateway.members)

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            outputs = self.gateway.handle(DatagramReceived(data, source[:2], self._loop.time()))
        except Exception:
            self.internal_errors += 1
            log.exception("core failed on a datagram from %s; dropped", source)
            return
        self._send(outputs)
        armed = self._timer_at
        wanted = self.gateway.next_deadline()
        if wanted is not None and (armed is None or wanted < armed):
            self._rearm()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            outputs = self.gateway.handle(TimerExpired(self._loop.time()))
        except Exception:
            self.internal_errors += 1
            log.exception("core failed on a timer event")
            outputs = []
        self._send(outputs)
        self._rearm()

    def _send(self, outputs: list[SendDatagram]) -> None:
        transport = self._transport
        if transport is None:
            return
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
        return snapshot(self.gateway, started_at=self._started_at, now=time.monotonic(), extra=extra)

    async def publish_status(self) -> None:
        """Rewrite the status file every interval until cancelled."""
        while self.status_file is not None:
            self.write_status()
            await asyncio.sleep(self.status_interval_s)

    def write_status(self) -> None:
        if self.status_file is None:
            return
        try:
            write_atomically(self.status_file, self.status())
        except OSError as error:
            log.warning("cannot write status file %s: %s", self.status_file, error)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
        self.write_status()
