"""Where each TCP connection stands, kept alike by the primary and the shadow (pure).

A connection survives a takeover only if the shadow can rebuild it with the sequence numbers
its peer expects (`net.tcp_repair`). The primary logs each connection as it is established
(`ConnectionBase`: its sequence numbers, options and window from the kernel, read once) and
as it closes; every message framed off it carries the stream bytes it took; every message the
cores send on it is an output of a logged event. So both replicas count, per connection, the
bytes received and sent since the base, and keep the last bytes sent (`RECENT_S`, at most
`RECENT_BYTES`): the peer may not have them yet, so the rebuilt socket holds them as
unacknowledged and the kernel sends them again (the peer drops what it already had, by
sequence number: TCP makes the re-send exact, where a datagram re-send would be a duplicate).

`StreamLedger` is updated the same way on both sides, in log order; the snapshot carries it
to a joining shadow (`export_state`, `import_state`). It decides nothing and never raises on
any order of events (a message on an unknown connection is ignored: its base was never seen).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from typing import Any

import msgspec

from sipshadow.core import SendMessage
from sipshadow.core.actions import TCP, Address

#: Bytes sent this recently (seconds, the primary's event clock) may still be unacknowledged.
RECENT_S = 1.0
#: At most this many recent bytes are kept per connection (a peer far behind is lost anyway).
RECENT_BYTES = 256 * 1024
#: Outputs waiting for a connection being opened, per peer (the primary queues as many).
PENDING_LIMIT = 64
_U32 = 0xFFFFFFFF


def peer_for(output: SendMessage, live: Container[Address]) -> Address:
    """The peer whose connection a TCP output goes on: its destination's if `live`, else its
    fallback's if live, else the one to open (the fallback if given, §18.2.2). The node writes
    by this rule and both replicas count by it, so they agree on every connection's bytes."""
    destination, fallback = output[1], output[3]
    if destination in live or fallback is None:
        return destination
    return fallback


class ConnectionBase(msgspec.Struct, array_like=True, frozen=True):
    """A connection as the primary's kernel held it when it was established.

    `local`: the primary's (IP, port) of it (the VIP); `send_seq`: the sequence number of the
    first byte this side writes; `recv_seq`: of the first byte it reads (u32 each); `mss`,
    window scales, SACK and timestamps as negotiated; `timestamp`: the TCP timestamp clock
    (ms) then; `window`: `TCP_REPAIR_WINDOW`'s (snd_wl1, snd_wnd, max_window, rcv_wnd,
    rcv_wup); `opened_at`: the primary's event clock (s).
    """

    local_host: str
    local_port: int
    send_seq: int
    recv_seq: int
    mss: int
    send_wscale: int
    recv_wscale: int
    sack: bool
    timestamps: bool
    timestamp: int
    window: tuple[int, int, int, int, int]
    opened_at: float


_BASE_ENCODER = msgspec.msgpack.Encoder()
_BASE_DECODER = msgspec.msgpack.Decoder(ConnectionBase)


def encode_base(base: ConnectionBase) -> bytes:
    """A base as a `STREAM_OPENED` log entry's payload (msgpack)."""
    return _BASE_ENCODER.encode(base)


def decode_base(payload: bytes) -> ConnectionBase:
    """The base in a `STREAM_OPENED` entry; raises msgspec.DecodeError or ValidationError."""
    return _BASE_DECODER.decode(payload)


class Connection:
    """One connection's ledger: its base, bytes received and sent since, the recent sends."""

    __slots__ = ("base", "peer", "received", "recent", "recent_bytes", "sent")

    def __init__(self, peer: Address, base: ConnectionBase) -> None:
        self.peer = peer
        self.base = base
        self.received = 0
        self.sent = 0
        #: (event time, bytes) of the recent sends, oldest first.
        self.recent: deque[tuple[float, bytes]] = deque()
        self.recent_bytes = 0

    def send(self, data: bytes, now: float) -> None:
        self.sent += len(data)
        self.recent.append((now, data))
        self.recent_bytes += len(data)
        while self.recent and (self.recent[0][0] < now - RECENT_S or self.recent_bytes > RECENT_BYTES):
            self.recent_bytes -= len(self.recent.popleft()[1])

    @property
    def send_seq(self) -> int:
        """The sequence number just past the last byte sent."""
        return (self.base.send_seq + self.sent) & _U32

    @property
    def recv_seq(self) -> int:
        """The sequence number of the next byte the peer sends (past all it sent that was logged)."""
        return (self.base.recv_seq + self.received) & _U32

    def unacknowledged(self, acknowledged: int | None = None) -> bytes:
        """The recent bytes sent, which the peer may still lack; with the sequence number the
        peer last `acknowledged` (from the mirror), only those past it."""
        recent = b"".join(data for _, data in self.recent)
        if acknowledged is None:
            return recent
        outstanding = (self.send_seq - acknowledged) & _U32
        return recent[len(recent) - outstanding :] if outstanding <= len(recent) else recent


class StreamLedger:
    """Every live connection by peer (IP, port), and outputs waiting for one to open."""

    def __init__(self) -> None:
        self.connections: dict[Address, Connection] = {}
        self.pending: dict[Address, list[bytes]] = {}

    def opened(self, peer: Address, base: ConnectionBase) -> None:
        """A connection came up; what waited for it was written on it first."""
        connection = self.connections[peer] = Connection(peer, base)
        for data in self.pending.pop(peer, ()):
            connection.send(data, base.opened_at)

    def closed(self, peer: Address) -> None:
        self.connections.pop(peer, None)
        self.pending.pop(peer, None)

    def received(self, peer: Address, consumed: int) -> None:
        connection = self.connections.get(peer)
        if connection is not None:
            connection.received += consumed

    def sent(self, outputs: list[SendMessage], now: float) -> None:
        """Count what the core sent over TCP, on the connection the node writes it on."""
        for output in outputs:
            if output[2] != TCP:
                continue
            peer = peer_for(output, self.connections)
            connection = self.connections.get(peer)
            if connection is not None:
                connection.send(output[0], now)
                continue
            waiting = self.pending.setdefault(peer, [])
            if len(waiting) < PENDING_LIMIT:
                waiting.append(output[0])

    # -- state transfer -------------------------------------------------------------------

    def export_state(self) -> list[Any]:
        """[(peer host, peer port, base, received, sent, [(time, bytes), ...]), ...] in plain data."""
        return [
            (c.peer[0], c.peer[1], msgspec.to_builtins(c.base), c.received, c.sent, [list(r) for r in c.recent])
            for c in self.connections.values()
        ]

    def import_state(self, rows: list[Any]) -> None:
        """Replace the ledger with an `export_state()`; raises msgspec.ValidationError or
        ValueError on a malformed row."""
        self.connections = {}
        self.pending = {}
        for host, port, base, received, sent, recent in rows:
            connection = Connection((host, port), msgspec.convert(base, ConnectionBase))
            connection.received, connection.sent = received, sent
            for at, data in recent:
                connection.recent.append((at, bytes(data)))
                connection.recent_bytes += len(data)
            self.connections[(host, port)] = connection
