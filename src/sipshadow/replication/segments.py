"""The mirror's TCP segments, kept so a takeover can fill what the log never carried (pure).

A primary's kernel acknowledges a segment before the primary reads it, and the primary logs
the message only once it has read it: bytes in between are acknowledged (their sender will
never send them again) but unknown to the shadow's log. If the primary dies then, a rebuilt
connection would expect the peer's next byte where the peer has long moved on, and stall. In
tap mode the switch mirrors every segment sent to the primary onto the shadow; `SegmentStore`
keeps the recent ones per peer, and at takeover `after(peer, seq)` returns the bytes from the
logged position on, which the rebuilt socket holds as received and unread: the new primary
reads them as the old one would have.

A connection can also be younger than anything the log says: its handshake done with the
primary's kernel, its first message acknowledged, and the primary dead before it logged the
connection. The mirror saw the handshake (the peer's SYN and first ACK, or a member's SYN-ACK
for a connection the primary opened): `unlogged_connections` gives bases to rebuild those.

`parse` reads one IPv4 packet (from a cooked packet socket: no link header) into a `Segment`,
or None for anything else. Bounded: `horizon_s` of segments per peer, at most `peer_bytes`,
at most `MAX_OPENINGS` handshakes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from dataclasses import dataclass

from sipshadow.core.actions import Address
from sipshadow.replication.streams import ConnectionBase

_U32 = 0xFFFFFFFF
_TCP = 6
_HEAD = struct.Struct("!BBHHHBBH4s4s")  # version+IHL, TOS, total length, id, fragment, TTL, protocol, sum, src, dst
_TCP_HEAD = struct.Struct("!HHIIBBH")  # ports, seq, ack, data offset, flags, window
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
#: A segment's window of interest: anything older was logged long ago.
HORIZON_S = 2.0
PEER_BYTES = 512 * 1024
#: Openings remembered (the newest win): a SYN flood must not grow this without bound.
MAX_OPENINGS = 65536
#: Our side's window scale and receive window when the mirror cannot show them (Linux's
#: defaults with default buffers); a logged connection's base gives the real ones if any.
DEFAULT_RECV_WSCALE = 7
DEFAULT_RECV_WINDOW = 64 * 1024


@dataclass(frozen=True, slots=True)
class Options:
    """The TCP options a handshake carries (RFC 9293 §3.2, RFC 7323, RFC 2018)."""

    mss: int = 536
    wscale: int | None = None
    sack: bool = False
    tsval: int | None = None
    tsecr: int = 0


@dataclass(frozen=True, slots=True)
class Segment:
    """A TCP segment's peer (its source), destination port, sequence and acknowledgement
    numbers, flags, window (unscaled), options and payload."""

    peer: Address
    port: int
    seq: int
    payload: bytes
    ack: int = 0
    flags: int = _ACK
    window: int = 0
    options: Options = Options()


@dataclass(slots=True)
class _Opening:
    """What the mirror showed of a connection's handshake, and the peer's latest acknowledgement."""

    port: int
    peer_isn: int
    options: Options
    our_next: int | None = None  # our sequence number past the SYN, once the peer acknowledged it
    window: int = 0
    tsecr: int = 0


def parse(packet: bytes, destination: str) -> Segment | None:
    """The TCP segment in an IPv4 `packet` sent to `destination`, else None (another protocol
    or address, a fragment, a truncated header). Never raises."""
    if len(packet) < _HEAD.size:
        return None
    version_ihl, _tos, total, _id, fragment, _ttl, protocol, _sum, source, target = _HEAD.unpack_from(packet)
    header = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or protocol != _TCP or fragment & 0x3FFF or header < _HEAD.size:
        return None
    if str(ipaddress.IPv4Address(target)) != destination:
        return None
    end = min(total, len(packet))
    if end < header + 20:
        return None
    source_port, port, seq, ack, data_offset, flags, window = _TCP_HEAD.unpack_from(packet, header)
    offset = header + (data_offset >> 4) * 4
    if offset > end or offset < header + 20:
        return None
    options = _options(packet[header + 20 : offset]) if offset > header + 20 else Options()
    peer = (str(ipaddress.IPv4Address(source)), source_port)
    return Segment(peer, port, seq, packet[offset:end], ack, flags, window, options)


def _options(data: bytes) -> Options:
    """MSS, window scale, SACK permitted and timestamps out of a TCP header's options."""
    mss, wscale, sack, tsval, tsecr = 536, None, False, None, 0
    index = 0
    while index < len(data):
        kind = data[index]
        if kind == 0:
            break
        if kind == 1:
            index += 1
            continue
        if index + 1 >= len(data) or data[index + 1] < 2:
            break
        length = data[index + 1]
        value = data[index + 2 : index + length]
        if kind == 2 and len(value) == 2:
            mss = int.from_bytes(value, "big")
        elif kind == 3 and len(value) == 1:
            wscale = min(value[0], 14)
        elif kind == 4:
            sack = True
        elif kind == 8 and len(value) == 8:
            tsval, tsecr = int.from_bytes(value[:4], "big"), int.from_bytes(value[4:], "big")
        index += length
    return Options(mss, wscale, sack, tsval, tsecr)


class SegmentStore:
    """Recent segments per peer, as the mirror delivered them (retransmissions and all), and
    the handshakes it saw."""

    def __init__(self, horizon_s: float = HORIZON_S, peer_bytes: int = PEER_BYTES) -> None:
        self.horizon_s = horizon_s
        self.peer_bytes = peer_bytes
        self._by_peer: dict[Address, deque[tuple[float, int, bytes]]] = {}
        self._bytes: dict[Address, int] = {}
        self._openings: dict[Address, _Opening] = {}
        #: Each peer's latest acknowledgement number: what it had of our bytes.
        self._acks: dict[Address, int] = {}

    def add(self, segment: Segment, now: float) -> None:
        self._track(segment)
        if not segment.payload:
            return
        peer = segment.peer
        kept = self._by_peer.get(peer)
        if kept is None:
            kept = self._by_peer[peer] = deque()
            self._bytes[peer] = 0
        kept.append((now, segment.seq, segment.payload))
        self._bytes[peer] += len(segment.payload)
        while kept and (kept[0][0] < now - self.horizon_s or self._bytes[peer] > self.peer_bytes):
            self._bytes[peer] -= len(kept.popleft()[2])
        if not kept:
            del self._by_peer[peer], self._bytes[peer]

    def __len__(self) -> int:
        return len(self._by_peer) + len(self._openings)

    def after(self, peer: Address, seq: int) -> bytes:
        """The bytes `peer` sent from sequence number `seq` on, as far as they run unbroken."""
        starts = []
        for _, segment_seq, payload in self._by_peer.get(peer, ()):
            distance = (segment_seq - seq) & _U32
            starts.append((distance - (1 << 32) if distance >= 1 << 31 else distance, payload))
        starts.sort(key=lambda start: start[0])
        out = bytearray()
        for distance, payload in starts:
            if distance > len(out):
                break  # a hole: nothing after it can be used
            if distance + len(payload) > len(out):
                out += payload[len(out) - distance :]
        return bytes(out)

    def acknowledged(self, peer: Address) -> int | None:
        """The sequence number of our next byte `peer` last acknowledged, if the mirror saw one."""
        return self._acks.get(peer)

    def _track(self, segment: Segment) -> None:
        """Openings (a SYN from a peer, or its SYN-ACK to a connection this side opened) and the
        peer's latest window and timestamp echo; a reset or a FIN forgets the opening."""
        flags, peer = segment.flags, segment.peer
        if flags & (_RST | _FIN):
            self._openings.pop(peer, None)
            self._acks.pop(peer, None)
            return
        if flags & _ACK:
            self._acks[peer] = segment.ack
            if len(self._acks) > MAX_OPENINGS:
                self._acks.pop(next(iter(self._acks)))
        if flags & _SYN:
            opening = _Opening(segment.port, segment.seq, segment.options)
            if flags & _ACK:  # the peer answered our SYN: what it acknowledges is our ISN + 1
                opening.our_next = segment.ack
            self._openings.pop(peer, None)
            self._openings[peer] = opening
            if len(self._openings) > MAX_OPENINGS:
                self._openings.pop(next(iter(self._openings)))
        current = self._openings.get(peer)
        if current is None or not flags & _ACK:
            return
        if current.our_next is None and segment.seq == (current.peer_isn + 1) & _U32:
            current.our_next = segment.ack  # its first ACK: the handshake is done
        current.window = segment.window
        if segment.options.tsval is not None:
            current.tsecr = segment.options.tsecr

    def unlogged_connections(
        self, vip: str, logged: dict[Address, ConnectionBase], now: float
    ) -> list[tuple[Address, ConnectionBase]]:
        """The connections whose handshake the mirror saw done and the log never named, as
        bases to rebuild: both sides' sequence numbers past the SYNs (nothing sent by either
        that the log did not carry: `after` gives the peer's bytes), the peer's options and
        window, our timestamp clock as the peer last echoed it; our window scale and receive
        window from a logged connection if there is one, else Linux's defaults."""
        known = next(iter(logged.values()), None)
        recv_wscale = known.recv_wscale if known is not None else DEFAULT_RECV_WSCALE
        rcv_wnd = known.window[3] if known is not None else DEFAULT_RECV_WINDOW
        found = []
        for peer, opening in self._openings.items():
            if peer in logged or opening.our_next is None:
                continue
            options = opening.options
            scaled = options.wscale is not None
            send_wscale = options.wscale or 0
            window = opening.window << send_wscale
            base = ConnectionBase(
                vip, opening.port, opening.our_next, (opening.peer_isn + 1) & _U32, options.mss,
                send_wscale, recv_wscale if scaled else 0, options.sack, options.tsval is not None, opening.tsecr,
                (0, window, window, rcv_wnd, 0), now,
            )  # fmt: skip
            found.append((peer, base))
        return found
