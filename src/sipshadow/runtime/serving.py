"""What the primary role runs: the service socket with its core, and the replication server.

Created by `Serving.start` for `ServePrimary` (a fresh core) or a takeover (the replica's
core, what it owes the world, the tapped datagrams never logged); `stop` for `StepDown`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sipshadow.core import Gateway, SendMessage
from sipshadow.core.actions import Address
from sipshadow.determinism import RecordingEntropy
from sipshadow.link import Peering
from sipshadow.records.writer import RecordWriter
from sipshadow.replication.recorder import Recorder
from sipshadow.runtime.config import ReplicationConfig
from sipshadow.runtime.following import TapSocket
from sipshadow.runtime.node import Node
from sipshadow.runtime.primary_link import PrimaryLink, ShadowConnection
from sipshadow.runtime.streams import StreamLimits, listen_socket

log = logging.getLogger("sipshadow.ha")

T = TypeVar("T")

BIND_RETRY_S = 0.1  # a killed owner frees the port at once; a live one means no takeover


class Serving:
    """The primary's resources: `node` (socket + core + recorder) and the replication server."""

    def __init__(self, node: Node, link: PrimaryLink, server: asyncio.AbstractServer) -> None:
        self.node = node
        self.link = link
        self.server = server

    @classmethod
    async def start(
        cls, gateway: Gateway, recorder: RecordingEntropy, replication: ReplicationConfig, listen: Address, *,
        epoch: int, peering: Peering, tap_mode: bool, start_seq: int = 0, tap_socket: TapSocket | None = None,
        resend: list[SendMessage] | None = None, backlog: list[tuple[bytes, Address]] | None = None,
        stream_limits: StreamLimits | None = None, expected: list[Address] | None = None,
        listener: socket.socket | None = None, records: RecordWriter | None = None, clock_offset: float = 0.0,
    ) -> Serving:  # fmt: skip
        """Serve: the socket (the tap's, or bound now), then what a takeover owes the world, then
        the replication server. In tap mode log entries carry digests, not payloads (the shadow
        has the bytes from the mirror). Raises OSError if the service address is still owned."""
        node = Node(gateway, stream_limits, records)
        node.clock_offset = clock_offset  # a takeover carries on the old primary's event clock
        log_recorder = Recorder(
            gateway, recorder, epoch=epoch, start_seq=start_seq, output_commit=replication.output_commit,
            commit_timeout_s=replication.commit_timeout_s, with_payload=not tap_mode,
        )  # fmt: skip
        link = node.replicator = PrimaryLink(log_recorder, node.send, peering=peering, clock=node.now)
        if tap_socket is not None:
            node.adopt(*tap_socket, hold=True)  # the socket that took the tap serves from now on
            await node.start_streams(listen, listener)
        else:
            await _bind(node, listen, listener)
        if expected and node.streams is not None:  # the old primary's connections: rebuilt next, sends wait
            node.streams.expect(expected)
        node.send(resend or [])
        for data, source in backlog or []:  # the detection window's messages, in arrival order
            node.on_datagram(data, source)
        node.open_input()  # then what reached the socket since the takeover began
        host, port = replication.listen
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: ShadowConnection(link), host, port, reuse_address=True)
        except OSError:
            node.close()
            raise
        log.info("serving as PRIMARY on %s:%d (epoch %d)", *listen, epoch)
        return cls(node, link, server)

    async def stop(self) -> None:
        """Step down: another node owns the calls now, so what this one still held is dropped."""
        self.server.close()
        self.link.abandon()
        self.node.close()
        await asyncio.sleep(0)  # the closed socket lets go of the service address

    def close(self) -> None:
        """Stop, sending what was held (the node is shutting down)."""
        self.server.close()
        self.link.close()
        self.node.close()


async def bind_listener(listen: Address) -> socket.socket:
    """The TCP listener of the service address (`streams.listen_socket`), retried as `_bind`."""

    async def listen_now() -> socket.socket:
        return listen_socket(listen)

    return await _while_in_use(listen_now)


async def _bind(node: Node, listen: Address, listener: socket.socket | None) -> None:
    """Bind the service address; right after a kill the old owner may hold it a moment."""
    await _while_in_use(lambda: node.start(listen, listener))


async def _while_in_use(bind: Callable[[], Awaitable[T]]) -> T:
    """`bind()`, tried again for `BIND_RETRY_S` while the address is in use (EADDRINUSE)."""
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        try:
            return await bind()
        except OSError as error:
            if error.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.002)
