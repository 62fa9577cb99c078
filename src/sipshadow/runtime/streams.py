"""SIP over TCP at the service address: the listener, the connections, and their limits.

Each connection frames its bytes with `sip.stream.StreamFramer` (pure) and hands every whole
message to the node with its peer address, which names the connection while it lives (RFC
3261 §18.2.1). The core answers with `SendMessage(..., TCP, fallback)`: `send` writes on the
live connection to that peer, else opens one, from the service address so that it moves with
the VIP at a takeover (to `fallback` when given: §18.2.2, a response whose connection has
closed goes to the Via's received address and sent-by port).

What one peer can make this node hold is bounded (`StreamLimits`): the size of a message (its
head and its body, refused as soon as the head says so), connections in all and per source
address (more are reset at once), a message begun that does not complete within
`partial_timeout_s`, a connection idle for `idle_timeout_s` that no dialog needs, and bytes
queued for a peer that does not read. Each breach closes that one connection and is counted in
`counters`; every other connection and call goes on. Nothing here raises out of a callback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, cast

from sipshadow.core import SendMessage
from sipshadow.core.actions import Address
from sipshadow.core.replies import salvage_reply
from sipshadow.detect.throttle import ThrottledLog
from sipshadow.net import tcp_repair
from sipshadow.net.tcp_repair import TcpState
from sipshadow.replication.streams import Connection, peer_for
from sipshadow.runtime.addresses import ip_literal
from sipshadow.sip.stream import MAX_BODY_BYTES, MAX_HEAD_BYTES, PING, Framed, KeepAlive, StreamFramer, Unframable

log = logging.getLogger("sipshadow.tcp")

#: The counters `status` shows, in the order an operator reads them.
COUNTERS = (
    "accepted", "connected", "closed", "refused_total", "refused_per_source", "unframable", "partial_timeouts",
    "idle_closed", "connect_failures", "write_overflows", "keepalives", "send_failures", "repaired",
    "repair_failures", "udp_fallbacks",
)  # fmt: skip
#: A rebuilt connection's TCP timestamp clock runs this far ahead of the dead primary's last
#: known value: the peer drops a segment whose timestamp went back (PAWS, RFC 7323 §5), never
#: one that jumped ahead.
TIMESTAMP_MARGIN_MS = 10_000
_U32 = 0xFFFFFFFF
SWEEP_INTERVAL_S = 1.0
#: Connections rebuilt per loop turn at a takeover.
REPAIR_CHUNK = 64
LISTEN_BACKLOG = 1024


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Per-node TCP limits (config `[tcp]`); sizes in bytes, times in seconds."""

    max_head_bytes: int = MAX_HEAD_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    connections: int = 16_384
    #: One upstream proxy or SBC may carry every call on its own connection (SIPp -t tn).
    connections_per_source: int = 4_096
    partial_timeout_s: float = 10.0
    idle_timeout_s: float = 600.0
    connect_timeout_s: float = 3.0
    write_buffer_bytes: int = 4 * 1024 * 1024


#: (message bytes, peer, stream bytes it took): a message framed off a connection.
MessageHandler = Callable[[bytes, Address, int], None]


class SipStream(asyncio.Protocol):
    """One TCP connection carrying SIP, accepted or opened by this node."""

    def __init__(self, streams: Streams, peer: Address | None = None) -> None:
        self.streams = streams
        self.framer = StreamFramer(streams.limits.max_head_bytes, streams.limits.max_body_bytes)
        self.transport: asyncio.Transport | None = None
        #: The peer's (IP, port): known in advance for a connection this node opens.
        self.peer: Address | None = peer
        #: What was written before the connection was up (an outbound one being opened), each
        #: with its UDP form when it may go over UDP instead (`SendMessage.udp_data`).
        self.waiting: list[tuple[bytes, bytes | None]] = []
        self.last_activity = streams.loop.time()
        self.partial_since: float | None = None
        self.closed = False
        #: Rebuilt at a takeover (TCP repair): admitted whatever the limits; `repair_state` is
        #: where it was rebuilt to (a primary logs it as the connection's base).
        self.repaired = False
        self.repair_state: TcpState | None = None

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.transport = transport
        peername = transport.get_extra_info("peername")
        if peername is None:
            transport.abort()
            return
        self.peer = (_unmapped(str(peername[0])), int(peername[1]))
        if not self.streams.admit(self):
            transport.abort()  # a reset: the peer learns at once, and holds nothing here
            return
        self.streams.established(self)  # before anything is written: where the count begins
        transport.set_write_buffer_limits(high=self.streams.limits.write_buffer_bytes)
        for data, _ in self.waiting:
            transport.write(data)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        streams = self.streams
        self.last_activity = streams.loop.time()
        try:
            for item in self.framer.feed(data):
                if type(item) is Framed:
                    assert self.peer is not None
                    streams.deliver(item.data, self.peer, item.consumed)
                elif type(item) is KeepAlive:  # the core answers it, so a replica counts the pong
                    assert self.peer is not None
                    streams.counters["keepalives"] += 1
                    streams.deliver(PING, self.peer, item.consumed)
                else:
                    assert isinstance(item, Unframable)
                    self._unframable(item)
                    return
        except Exception:
            streams.counters["send_failures"] += 1
            log.exception("TCP input from %s failed; connection closed", self.peer)
            self.close()
            return
        self.partial_since = None if self.framer.pending_bytes == 0 else (self.partial_since or self.last_activity)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.streams.forget(self)

    # -- actions ------------------------------------------------------------------------------

    def write(self, data: bytes, udp_data: bytes | None = None) -> None:
        transport = self.transport
        if transport is None:
            self.waiting.append((data, udp_data))
            return
        if transport.is_closing():
            self.streams.counters["send_failures"] += 1
            return
        transport.write(data)
        self.last_activity = self.streams.loop.time()
        if transport.get_write_buffer_size() > self.streams.limits.write_buffer_bytes:
            self.streams.refuse(self, "write_overflows", "the peer does not read what is sent")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def duplicate_socket(self) -> socket.socket:
        """A duplicate descriptor of the connection's socket, for socket options (use it in a
        `with`: closing it closes nothing). Raises OSError when there is none (not connected)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            raise OSError(errno.ENOTCONN, "no socket")
        return socket.fromfd(sock.fileno(), sock.family, socket.SOCK_STREAM)

    def _unframable(self, fault: Unframable) -> None:
        """§18.3: a stream that cannot be framed gets a 400 when the head is a request, then closes."""
        salvaged = salvage_reply(fault.head, 400, fault.reason) if fault.head[:4].upper() != b"ACK " else None
        if salvaged is not None:
            self.write(salvaged[0])
        self.streams.refuse(self, "unframable", fault.reason)


class Streams:
    """The TCP side of the service address: listener, connections by peer, limits, sweeps."""

    def __init__(self, deliver: MessageHandler, limits: StreamLimits | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.deliver = deliver
        self.limits = limits or StreamLimits()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: Live and opening connections by their peer's (IP, port).
        self.by_peer: dict[Address, SipStream] = {}
        self._per_source: dict[str, int] = {}
        self._server: asyncio.AbstractServer | None = None
        self._local_host = "0.0.0.0"
        self._sweeper: asyncio.TimerHandle | None = None
        self._opening: set[asyncio.Task[None]] = set()
        self._warn = ThrottledLog(log)
        #: Peers a dialog still needs (the node sets it): they are never closed for idleness.
        self.needed: Callable[[], Iterable[Address]] = tuple
        #: Told of each connection established (its peer, socket, and the state it was rebuilt
        #: to if it was) and closed (a primary logs them for its shadow).
        self.on_established: Callable[[Address, socket.socket, TcpState | None], None] | None = None
        self.on_closed: Callable[[Address], None] | None = None
        #: Sends datagrams from the service socket: requests a member refused over TCP.
        self.send_udp: Callable[[list[SendMessage]], None] | None = None

    async def start(self, listen: Address, listener: socket.socket | None = None) -> None:
        """Listen on TCP at `listen` (the UDP service port), on `listener` if given (bound
        already, `listen_socket`); connections opened go out from its host."""
        self._local_host = listen[0]
        sock = listener if listener is not None else listen_socket(listen)
        try:
            self._server = await self.loop.create_server(lambda: SipStream(self), sock=sock, backlog=LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    @property
    def live(self) -> int:
        return len(self.by_peer)

    # -- admission and bookkeeping ------------------------------------------------------------

    def admit(self, stream: SipStream) -> bool:
        """Count an established connection in, or refuse it over a limit."""
        assert stream.peer is not None
        known = self.by_peer.get(stream.peer)
        if stream.repaired:
            self._per_source[stream.peer[0]] = self._per_source.get(stream.peer[0], 0) + 1
            self.counters["repaired"] += 1
            return True
        outbound = known is stream
        if not outbound:
            source = stream.peer[0]
            if len(self.by_peer) >= self.limits.connections:
                self._count_refusal("refused_total", stream.peer, f"{self.limits.connections} connections open")
                return False
            if self._per_source.get(source, 0) >= self.limits.connections_per_source:
                limit = self.limits.connections_per_source
                self._count_refusal("refused_per_source", stream.peer, f"{limit} connections from {source}")
                return False
            if known is not None:
                known.close()  # the same peer address again: the old one is gone
            self.by_peer[stream.peer] = stream
            self._per_source[source] = self._per_source.get(source, 0) + 1
            self.counters["accepted"] += 1
        else:
            self.counters["connected"] += 1
        return True

    def established(self, stream: SipStream) -> None:
        hook, transport = self.on_established, stream.transport
        if hook is None or transport is None or stream.peer is None:
            return
        try:
            with stream.duplicate_socket() as sock:
                hook(stream.peer, sock, stream.repair_state)
        except Exception:
            log.exception("connection hook failed for %s", stream.peer)

    def forget(self, stream: SipStream) -> None:
        peer = stream.peer
        if peer is None or self.by_peer.get(peer) is not stream:
            return
        del self.by_peer[peer]
        self.counters["closed"] += 1
        if self.on_closed is not None and stream.transport is not None:
            self.on_closed(peer)
        count = self._per_source.get(peer[0], 0) - 1
        if count > 0:
            self._per_source[peer[0]] = count
        else:
            self._per_source.pop(peer[0], None)

    def refuse(self, stream: SipStream, counter: str, why: str) -> None:
        self._count_refusal(counter, stream.peer, why)
        stream.close()

    def _count_refusal(self, counter: str, peer: Address | None, why: str) -> None:
        self.counters[counter] += 1
        self._warn.log(
            logging.WARNING, counter, "closed a TCP connection from %s: %s (counter tcp.%s)", peer, why, counter
        )

    def expect(self, peers: Iterable[Address]) -> None:
        """Connections a takeover is about to rebuild (`repair`): what is sent to them waits."""
        for peer in peers:
            if peer not in self.by_peer:
                stream = self.by_peer[peer] = SipStream(self, peer)
                stream.repaired = True

    async def repair(
        self, connections: list[Connection], now: float, mirror: Mirror | None = None
    ) -> tuple[int, int, int]:
        """Rebuild the old primary's connections (TCP repair) and serve on them, `REPAIR_CHUNK`
        at a time with the loop turning between chunks (the node serves meanwhile; what is sent
        to one not yet rebuilt waits in it). `mirror` (tap mode) gives the bytes each peer sent
        past the logged position, and what it had acknowledged. Returns (rebuilt, failed, bytes
        taken from the mirror)."""
        rebuilt = failed = recovered = 0
        for start in range(0, len(connections), REPAIR_CHUNK):
            adopting = []
            for connection in connections[start : start + REPAIR_CHUNK]:
                peer = connection.peer
                gap = mirror.after(peer, connection.recv_seq) if mirror is not None else b""
                acknowledged = mirror.acknowledged(peer) if mirror is not None else None
                recovered += len(gap)
                state = repair_state(connection, now, gap, acknowledged)
                try:
                    sock = tcp_repair.restore(state)
                except OSError as error:
                    failed += 1
                    self._give_up(connection.peer, f"cannot rebuild it: {error}")
                    continue
                adopting.append(self._adopt(connection.peer, sock, state))
            outcomes = await asyncio.gather(*adopting)
            rebuilt += sum(outcomes)
            failed += len(outcomes) - sum(outcomes)
        self.counters["repair_failures"] += failed
        return rebuilt, failed, recovered

    async def _adopt(self, peer: Address, sock: socket.socket, state: TcpState) -> bool:
        stream = self.by_peer.get(peer)
        if stream is None or stream.transport is not None or not stream.repaired:
            stream = self.by_peer[peer] = SipStream(self, peer)
            stream.repaired = True
        stream.repair_state = state
        try:
            await self.loop.create_connection(lambda: stream, sock=sock)
        except OSError as error:
            sock.close()
            self._give_up(peer, f"cannot serve on it: {error}")
            return False
        return True

    def _give_up(self, peer: Address, why: str) -> None:
        """A connection that could not be rebuilt: what waited for it is dropped and counted."""
        stream = self.by_peer.get(peer)
        if stream is not None and stream.transport is None:
            del self.by_peer[peer]
            self.counters["send_failures"] += len(stream.waiting)
        log.warning("the TCP connection with %s:%d is lost: %s", *peer, why)

    # -- sending ------------------------------------------------------------------------------

    def send(self, output: SendMessage) -> None:
        """Write one message on the connection to its destination, opening one if there is none."""
        peer = peer_for(output, self.by_peer)
        stream = self.by_peer.get(peer)
        if stream is None:
            stream = self._open(peer)
            if stream is None:
                return
        stream.write(output[0], output[4])

    def _open(self, destination: Address) -> SipStream | None:
        host, port = destination
        host = host.strip("[]")
        if ip_literal(host) is None or not 0 < port < 65536:
            self.counters["send_failures"] += 1  # names over TCP: not resolved here (members are literals)
            self._warn.log(logging.WARNING, "names", "cannot open TCP to %s:%s: not an IP address and port", host, port)
            return None
        peer = (host, port)
        stream = SipStream(self, peer)
        self.by_peer[peer] = stream
        task = self.loop.create_task(self._connect(stream, peer))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)
        return stream

    async def _connect(self, stream: SipStream, peer: Address) -> None:
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        local = (self._local_host, 0) if _same_family(self._local_host, family) else None
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: stream, peer[0], peer[1], local_addr=local),
                self.limits.connect_timeout_s,
            )
        except (OSError, TimeoutError) as error:
            self.counters["connect_failures"] += 1
            self._warn.log(logging.WARNING, "connect", "cannot open TCP to %s:%d: %s", *peer, error)
            waiting, stream.waiting = stream.waiting, []
            retry = []  # a reset: what has a UDP form goes over UDP after all (§18.1.1)
            send_udp = self.send_udp
            if isinstance(error, ConnectionRefusedError) and send_udp is not None:
                retry = [SendMessage(udp, peer) for _, udp in waiting if udp is not None]
                if retry:
                    self.counters["udp_fallbacks"] += len(retry)
                    send_udp(retry)
            self.counters["send_failures"] += len(waiting) - len(retry)
            if self.by_peer.get(peer) is stream:
                del self.by_peer[peer]
            if self.on_closed is not None:
                self.on_closed(peer)  # a replica drops what waited for it too

    # -- sweeping -----------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close connections with a message stuck half-way, or idle with no dialog on them."""
        now = self.loop.time()
        limits = self.limits
        try:
            idle = [s for s in self.by_peer.values() if now - s.last_activity > limits.idle_timeout_s]
            needed = set(self.needed()) if idle else set()
            for stream in idle:
                if stream.peer not in needed:
                    self.refuse(stream, "idle_closed", f"idle {limits.idle_timeout_s:g} s with no dialog")
            for stream in list(self.by_peer.values()):
                since = stream.partial_since
                if since is not None and now - since > limits.partial_timeout_s:
                    self.refuse(
                        stream, "partial_timeouts", f"a message unfinished after {limits.partial_timeout_s:g} s"
                    )
        except Exception:
            log.exception("TCP sweep failed")
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def release_listener(self) -> socket.socket | None:
        """A handoff on one host: a duplicate of the listening socket for the next primary;
        this node accepts no more (its queue of connections waiting stays, for the next)."""
        server, self._server = self._server, None
        listening = getattr(server, "sockets", None) if server is not None else None  # asyncio's and uvloop's
        if server is None or not listening:
            return None
        sock = socket.socket(fileno=os.dup(listening[0].fileno()))
        server.close()
        return sock

    def close(self) -> None:
        """Stop listening and close every connection (a FIN each)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._opening):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for stream in list(self.by_peer.values()):
            stream.close()


def listen_socket(listen: Address) -> socket.socket:
    """A TCP socket listening at `listen`, bound even before the address is on this host (a
    takeover binds it, then rebuilds the connections on the same port, then claims the VIP:
    a rebuilt socket leaves repair mode without SO_REUSEADDR, so the listener must come
    first). Raises OSError (EADDRINUSE: the address is still served here)."""
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, tcp_repair.IP_FREEBIND, 1)
        sock.bind(listen)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Mirror(Protocol):
    """What tap mode's mirror saw of the peers (`replication.segments.SegmentStore`)."""

    def after(self, peer: Address, seq: int) -> bytes: ...

    def acknowledged(self, peer: Address) -> int | None: ...


def repair_state(
    connection: Connection, now: float, unlogged: bytes = b"", acknowledged: int | None = None
) -> TcpState:
    """Where the peer of a logged connection expects it to stand (for `tcp_repair.restore`):
    the sequence numbers the log counted, the recent bytes sent as unacknowledged (the kernel
    sends them again; the peer keeps only what it lacked), the base's options and window, the
    timestamp clock moved on by the time since the base (`now`: the primary's event clock at
    its last entry) plus `TIMESTAMP_MARGIN_MS`; `unlogged`, the bytes the peer sent past the
    logged position (from the mirror), as received and not yet read; `acknowledged`, the peer's
    last acknowledgement the mirror saw: only the bytes past it are unacknowledged."""
    base = connection.base
    recv_seq = (connection.recv_seq + len(unlogged)) & _U32
    _wl1, snd_wnd, max_window, rcv_wnd, _wup = base.window
    ahead_ms = max(0, round((now - base.opened_at) * 1000)) + TIMESTAMP_MARGIN_MS
    return TcpState(
        local=(base.local_host, base.local_port), remote=connection.peer, send_seq=connection.send_seq,
        recv_seq=recv_seq, unacked=connection.unacknowledged(acknowledged), unread=unlogged, mss=base.mss,
        send_wscale=base.send_wscale, recv_wscale=base.recv_wscale, sack=base.sack, timestamps=base.timestamps,
        timestamp=(base.timestamp + ahead_ms) & _U32, window=(recv_seq, snd_wnd, max_window, rcv_wnd, recv_seq),
    )  # fmt: skip


def _unmapped(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _same_family(host: str, family: int) -> bool:
    return (":" in host) == (family == socket.AF_INET6)
