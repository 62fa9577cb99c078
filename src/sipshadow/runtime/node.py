"""The asyncio node: the service address (UDP and TCP), the core, and its one timer.

The UDP endpoint's callback and each TCP connection's framer hand every message straight to
the core in arrival order (one ordered input stream, which is what replication records), the
node sends what the core returns by the transport it names, and keeps a single `call_at`
armed at the core's next deadline (aioquic's pattern).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable

from sipshadow.core import Event, Gateway, MessageReceived, TimerExpired
from sipshadow.core.actions import TCP, UDP, Address, SendMessage
from sipshadow.core.events import Control, SetClock
from sipshadow.core.records import RECORDS
from sipshadow.net import tcp_repair
from sipshadow.records.writer import RecordWriter
from sipshadow.replication.streams import ConnectionBase
from sipshadow.runtime.handover import ServiceSockets
from sipshadow.runtime.logformat import call_id_of
from sipshadow.runtime.primary_link import PrimaryLink
from sipshadow.runtime.sender import DatagramSender
from sipshadow.runtime.status import StatusDocument, snapshot
from sipshadow.runtime.streams import StreamLimits, Streams

log = logging.getLogger("sipshadow.node")

SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
#: A loop that stood still this long may have been taken over meanwhile (the beat process stops
#: beating after its 0.5 s stall limit): the node fences itself before it handles anything more.
STALL_FENCE_S = 0.45
#: How often the node notes that its loop turns (s).
PULSE_S = 0.05
#: A wall clock stepped by more than this (s) is told to the core again (`SetClock`): call
#: records are dated to within it.
CLOCK_DRIFT_S = 0.1
#: linux/in.h and linux/in6.h (not exported by the socket module).
IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75
#: Datagrams a fenced node keeps for later (about a second at thousands of calls/s).
FENCE_QUEUE_LIMIT = 10_000


def bind_udp(address: Address) -> socket.socket:
    """A UDP socket with buffers big enough to ride out bursts at thousands of calls/s.

    A Via may name a broadcast or multicast next hop (RFC 3261 §18.2.2): the socket may
    broadcast, and multicast leaves with a TTL (hop limit) of 1.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
    # A primary whose VIP an external owner (keepalived) removed must still let out the outputs
    # it already committed to, from the VIP, until it hands off: transparent sockets may send
    # from an address the host no longer holds (needs CAP_NET_ADMIN; without it, nothing changes).
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6,
                        IP_TRANSPARENT if family == socket.AF_INET else IPV6_TRANSPARENT, 1)  # fmt: skip
    sock.bind(address)
    sock.setblocking(False)
    return sock


class DatagramEndpoint(asyncio.DatagramProtocol):
    """The service socket's protocol; its handler changes hands at takeover (tap -> node).
    With no handler, datagrams wait in `waiting`, in arrival order (a takeover first handles
    what is older: the re-sends, the messages the old primary read and never logged)."""

    def __init__(self, handler: Callable[[bytes, tuple[str, int]], None] | None) -> None:
        self.handler = handler
        self.waiting: list[tuple[bytes, tuple[str, int]]] = []
        self.errors = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.handler is None:
            self.waiting.append((data, addr))
            return
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


async def adopt_endpoint(sock: socket.socket) -> tuple[asyncio.DatagramTransport, DatagramEndpoint]:
    """An endpoint on a bound UDP socket handed over by the old primary (`runtime.handover`);
    its handler is set when a node adopts it (`Node.adopt`)."""
    loop = asyncio.get_running_loop()
    endpoint = DatagramEndpoint(None)  # what the kernel queued meanwhile waits for the node
    transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
    return transport, endpoint


class Node:
    """Wires a Gateway to a socket and the loop clock; makes no decisions of its own."""

    def __init__(self, gateway: Gateway, stream_limits: StreamLimits | None = None,
                 records: RecordWriter | None = None) -> None:  # fmt: skip
        self.gateway = gateway
        #: Where released call records go (journal, then store); None: records are not kept.
        self.records = records
        self._records_unkept = 0
        self.internal_errors = 0
        self.sent_datagrams = 0
        #: On a primary, every event goes through the replicator, which decides when to send.
        self.replicator: PrimaryLink | None = None
        #: While fenced (`fence`), arriving datagrams wait here, with their arrival times.
        self._fenced: deque[tuple[MessageReceived, int]] | None = None
        #: Outputs held while fenced after a stall (sent at `unfence`, dropped at `close`).
        self._held_outputs: list[SendMessage] | None = None
        #: Told (with the stall's length, s) when the loop is found to have stood still past
        #: `STALL_FENCE_S`; the node has fenced itself by then (an HA node; None: solo).
        self.on_stall: Callable[[float], None] | None = None
        self._loop = asyncio.get_running_loop()
        #: Outputs `send` queued this loop turn, and the `flush` that sends them at its end.
        self._outbox: list[SendMessage] = []
        self._flush_handle: asyncio.Handle | None = None
        #: The only way out to the SIP side: names resolved off the loop, failures counted.
        self.sender = DatagramSender(self._loop)
        self._transport: asyncio.DatagramTransport | None = None
        self._endpoint: DatagramEndpoint | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._started_at = time.monotonic()
        #: The event clock is the loop's plus this (s): 0 on a node that started serving; at a
        #: takeover, what carries on the old primary's clock (the core's deadlines are on it,
        #: and a host of its own has a monotonic clock of its own).
        self.clock_offset = 0.0
        self._all_down = False
        #: TCP at the service address (`start_streams`); None until then.
        self.streams: Streams | None = None
        self._stream_limits = stream_limits
        self._unrepairable_said = False
        self._pulse_at = self._loop.time()
        self._pulse = self._loop.call_later(PULSE_S, self._on_pulse)

    async def start(self, listen: Address, listener: socket.socket | None = None) -> None:
        self.adopt(*await open_endpoint(listen, self.on_datagram))
        await self.start_streams(listen, listener)
        log.info("serving on %s:%d (UDP and TCP), members %s", *listen, self.gateway.members)

    async def start_streams(self, listen: Address, listener: socket.socket | None = None) -> None:
        """Listen on TCP at the service port too (RFC 3261 §18: every element speaks TCP), on
        `listener` if a takeover bound it already."""
        if self.streams is None:
            streams = Streams(self.on_stream_message, self._stream_limits)
            streams.needed = self._tcp_peers_in_dialogs
            streams.on_established, streams.on_closed = self._stream_opened, self._stream_closed
            streams.send_udp = self.sender.send
            await streams.start(listen, listener)
            self.streams = streams

    def adopt(self, transport: asyncio.DatagramTransport, endpoint: DatagramEndpoint, *, hold: bool = False) -> None:
        """Serve on an already bound socket (the shadow's tap socket, or the old primary's, at
        takeover). `hold`: what arrives waits until `open_input`, so that a takeover handles
        the older messages it owes first."""
        endpoint.handler = None if hold else self.on_datagram
        self._transport, self._endpoint = transport, endpoint
        config = self.gateway.config
        self.sender.attach(transport, own=(config.service, *config.aliases))
        self._anchor_clock()
        self._rearm()

    def open_input(self) -> None:
        """After `adopt(hold=True)`: handle what waited, in arrival order, then all that comes."""
        endpoint = self._endpoint
        if endpoint is None or endpoint.handler is not None:
            return
        waiting, endpoint.waiting = endpoint.waiting, []
        endpoint.handler = self.on_datagram  # nothing arrives while this runs: one loop, one turn
        for data, source in waiting:
            self.on_datagram(data, source)

    @property
    def send_errors(self) -> int:
        return self._endpoint.errors if self._endpoint is not None else 0

    def on_stream_message(self, data: bytes, source: Address, consumed: int) -> None:
        """A message framed off a TCP connection; `consumed`: the stream bytes it took."""
        self.on_datagram(data, source, TCP, consumed)

    def _on_pulse(self) -> None:
        self._stood_still(self._loop.time())
        if self.gateway.config.call_records and self._transport is not None and self._fenced is None:
            self._anchor_clock(only_if_drifted=True)
        self._pulse_at = self._loop.time()
        self._pulse = self._loop.call_later(PULSE_S, self._on_pulse)

    def _stood_still(self, now: float) -> bool:
        """Whether the loop stood still past `STALL_FENCE_S` since its last pulse (a freeze, a
        long pause): then fence at once, outputs held too, before any timer or message is
        handled, and tell the HA shell, which decides (step down, or serve on). `now`: the
        loop's time. A solo node (no `on_stall`) never fences."""
        if self.on_stall is None:
            return False
        gap = now - self._pulse_at
        if gap < STALL_FENCE_S:
            return False
        self._pulse_at = now
        if self._fenced is None:
            log.error("the loop stood still %.0f ms: fenced before handling anything more", gap * 1000)
            self.fence(hold_outputs=True)
            self.on_stall(gap)
        return True

    def on_datagram(self, data: bytes, source: tuple[str, int], transport: str = UDP, consumed: int = 0) -> None:
        """One message in: from the UDP endpoint (any datagram), or framed off a TCP connection."""
        now = self._loop.time()
        self._stood_still(now)
        event = MessageReceived(data, source[:2], now + self.clock_offset, transport)
        if self._fenced is not None:
            if len(self._fenced) < FENCE_QUEUE_LIMIT:
                self._fenced.append((event, consumed))
            return
        self._take(event, consumed)
        armed = self._timer_at
        wanted = self.gateway.next_deadline()
        if wanted is not None and (armed is None or wanted < armed):
            self._rearm()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._stood_still(self._loop.time())
        if self._fenced is not None:
            return  # `unfence` re-arms
        self._take(TimerExpired(self.now()))
        self._rearm()
        self._say_if_all_down()

    def _say_if_all_down(self) -> None:
        """Health changes at probe rounds (timer events): say when every member looks down."""
        all_down = not self.gateway.health.healthy()
        if all_down != self._all_down:
            self._all_down = all_down
            if all_down:
                log.warning("every member looks down: new requests go to all of them anyway (counter routed_all_down)")
            else:
                log.info("a member is back in service")

    def _take(self, event: Event, stream_bytes: int = 0) -> None:
        try:
            outputs = self.gateway.handle(event)
        except Exception:
            self.internal_errors += 1
            call_id = call_id_of(event.data) if type(event) is MessageReceived else None
            log.exception("core failed on %s; dropped", type(event).__name__,
                          extra={"call_id": call_id} if call_id else None)
            outputs = []
        if self.replicator is not None:
            self.replicator.record(event, outputs, stream_bytes)
        else:
            self.send(outputs)

    def _stream_opened(self, peer: Address, sock: socket.socket, rebuilt: tcp_repair.TcpState | None) -> None:
        """A TCP connection is established (or `rebuilt` to that state at a takeover): a primary
        logs where it stands, so that its shadow can rebuild it at a takeover (needs
        CAP_NET_ADMIN; without it the connection is not)."""
        if self.replicator is None:
            return
        try:
            state = rebuilt if rebuilt is not None else tcp_repair.peek(sock)
        except OSError as error:
            if not self._unrepairable_said:
                self._unrepairable_said = True
                log.warning("cannot read TCP connections for the shadow (%s): they will not survive a takeover", error)
            return
        base = ConnectionBase(
            state.local[0], state.local[1], state.send_seq, state.recv_seq, state.mss, state.send_wscale,
            state.recv_wscale, state.sack, state.timestamps, state.timestamp, state.window, self.now(),
        )  # fmt: skip
        self.replicator.record_stream(peer, base, self.now())

    def _stream_closed(self, peer: Address) -> None:
        if self.replicator is not None:
            self.replicator.record_stream(peer, None, self.now())

    def fence(self, *, hold_outputs: bool = False) -> None:
        """Take no input: datagrams wait (up to `FENCE_QUEUE_LIMIT`), timers do not fire. With
        `hold_outputs` (a stall: another node may serve by now) nothing is sent either."""
        if self._fenced is None:
            self._fenced = deque()
        if hold_outputs and self._held_outputs is None:
            self._held_outputs = []

    def unfence(self) -> None:
        """Send what was held, take what waited, in arrival order, then serve on."""
        held, self._held_outputs = self._held_outputs, None
        if held:
            self.send(held)
        waiting, self._fenced = self._fenced, None
        for event, consumed in waiting or ():
            self._take(event, consumed)
        self._rearm()

    def control(self, event: Control) -> None:
        """An operator's change (reload, drain) into the core, in order with the traffic (so
        the primary logs it and the shadow applies it at the same point)."""
        self._take(event)
        self._rearm()

    def _anchor_clock(self, *, only_if_drifted: bool = False) -> None:
        """Tell the core how the event clock maps to UTC (`SetClock`), for call records: when
        the node starts serving (a new primary's clock is its own) and when the wall clock was
        stepped by more than `CLOCK_DRIFT_S` since."""
        if not self.gateway.config.call_records:
            return
        now = self.now()
        offset = time.time() - now
        if only_if_drifted and abs(offset - self.gateway.utc_offset) <= CLOCK_DRIFT_S:
            return
        self.control(SetClock(offset, now))

    def now(self) -> float:
        """The event clock (the loop's plus `clock_offset`), for an event built outside the node."""
        return self._loop.time() + self.clock_offset

    def give_up_service_sockets(self) -> ServiceSockets:
        """A handoff on one host (`runtime.handover`): duplicates of the UDP socket and the TCP
        listener, this node's copies closed, and the datagrams that arrived while fenced
        (held for the next primary, in order). Call once fenced (`fence`)."""
        sockets = ServiceSockets()
        self.flush()
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            sockets.udp = socket.socket(fileno=os.dup(sock.fileno()))
            self._transport.close()
            self._transport = None
        if self.streams is not None:
            sockets.listener = self.streams.release_listener()
        waiting, self._fenced = self._fenced or deque(), deque()
        sockets.held = [(event.data, event.source) for event, _ in waiting if event.transport == UDP]
        return sockets

    def send(self, outputs: list[SendMessage]) -> None:
        """Queue the core's outputs, in order; they leave at the end of this loop turn (`flush`).

        A loop turn handles every datagram that was waiting, so its outputs then go out back to
        back: a receiver woken by the first is still awake for the rest, where one send per
        datagram between the receives woke it (an IPI and a context switch) every time. That
        cut the node's CPU per call by about 15 % (docs/performance.md). Never raises.
        """
        if not outputs:
            return
        self._outbox.extend(outputs)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what `send` queued (what cannot be sent is dropped and counted); never raises.
        Also called before the node closes or hands its sockets over."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        outputs, self._outbox = self._outbox, []
        if not outputs:
            return
        try:
            self._send_now(outputs)
        except Exception:  # a bug here must not reach the loop's callbacks or the replication link
            self.internal_errors += 1
            log.exception("sending %d outputs failed; dropped", len(outputs))

    def _send_now(self, outputs: list[SendMessage]) -> None:
        if self._transport is None:
            return
        if self.on_stall is not None and self._held_outputs is None:
            self._stood_still(self._loop.time())  # a release after a stall must not let stale outputs out
        if self._held_outputs is not None:
            self._held_outputs.extend(outputs)
            return
        self.sent_datagrams += len(outputs)
        streams = self.streams
        datagrams = outputs
        for output in outputs:
            if output[2] != UDP:
                datagrams = [o for o in outputs if o[2] == UDP]
                records = [o[0] for o in outputs if o[2] == RECORDS]
                if records:
                    self._keep_records(records)
                for stream_output in outputs:
                    if stream_output[2] == TCP and streams is not None:
                        streams.send(stream_output)
                break
        self.sender.send(datagrams)

    def _keep_records(self, records: list[bytes]) -> None:
        """Released call records to the journal (`records.writer`); without one, counted."""
        if self.records is not None:
            self.records.submit(records)
            return
        if not self._records_unkept:
            log.warning("call records are made but this node has no [cdr] store: they are not kept")
        self._records_unkept += len(records)

    def _tcp_peers_in_dialogs(self) -> list[Address]:
        """The TCP peers a call still needs (its caller, over TCP): kept open however idle."""
        peers: list[Address] = []
        for call in self.gateway.table.calls.values():
            peers.extend(attempt.source for attempt in call.attempts.values() if attempt.transport == TCP)
            peers.extend(dialog.caller for dialog in call.dialogs.values() if dialog.transport == TCP)
        return peers

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.gateway.next_deadline()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline - self.clock_offset, self._on_timer)

    def status(self) -> StatusDocument:
        replication = self.replicator.status() if self.replicator is not None else None
        return snapshot(self.gateway, started_at=self._started_at, now=time.monotonic(),
                        internal_errors=self.internal_errors, send_errors=self.send_errors,
                        sender=self.sender.counters, replication=replication,
                        tcp_connections=self.streams.live if self.streams is not None else None,
                        tcp=self.streams.counters if self.streams is not None else None,
                        records=self.records.status() if self.records is not None else None)  # fmt: skip

    def audit_streams(self) -> int:
        """Compare, for each TCP connection, what the replication ledger counted with what the
        kernel says was written and read (a primary only); log each mismatch, return how many."""
        if self.replicator is None or self.streams is None:
            return 0
        ledger = self.replicator.recorder.streams
        mismatches = 0
        for peer, stream in self.streams.by_peer.items():
            connection = ledger.connections.get(peer)
            transport = stream.transport
            if connection is None or transport is None or transport.is_closing():
                continue
            try:
                with stream.duplicate_socket() as sock:
                    state = tcp_repair.peek(sock)
            except OSError:
                continue
            written = (state.send_seq - connection.base.send_seq) & 0xFFFFFFFF
            written += transport.get_write_buffer_size()
            read = (state.recv_seq - connection.base.recv_seq) & 0xFFFFFFFF
            if written != connection.sent or read != connection.received + stream.framer.pending_bytes:
                mismatches += 1
                pending = stream.framer.pending_bytes
                log.warning("ledger of %s: sent %d (kernel %d), received %d + %d pending (kernel %d)", peer,
                            connection.sent, written, connection.received, pending, read)  # fmt: skip
        return mismatches

    def close(self) -> None:
        self.flush()
        self._pulse.cancel()
        if self._held_outputs:
            log.warning("%d outputs held since a stall were never sent (another node serves)", len(self._held_outputs))
        if self._fenced:
            log.warning("%d messages arrived while fenced and were never handled", len(self._fenced))
        if self.replicator is not None:
            log.info("TCP ledger audit: %d mismatches", self.audit_streams())
        if self._timer is not None:
            self._timer.cancel()
        self.sender.close()
        if self.streams is not None:
            self.streams.close()
        if self._transport is not None:
            self._transport.close()
