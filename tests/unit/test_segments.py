"""The mirror's TCP segments: parsed from IPv4 packets, and reassembled from a logged position."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.net.capture import tcp_to
from sipshadow.replication.segments import Segment, SegmentStore, parse

VIP, PEER = "198.18.0.1", ("198.18.0.10", 40000)


def packet(payload: bytes, seq: int, *, destination: str = VIP, protocol: int = 6, fragment: int = 0) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", PEER[1], 5060, seq, 0, 5 << 4, 0x18, 64240, 0, 0) + payload
    total = 20 + len(tcp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, fragment, 64, protocol, 0,
                     socket.inet_aton(PEER[0]), socket.inet_aton(destination))  # fmt: skip
    return ip + tcp + b"\x00" * 6  # a short frame's padding is not payload


def test_a_segment_to_the_vip_is_parsed_and_anything_else_is_not() -> None:
    segment = parse(packet(b"INVITE", 1000), VIP)
    assert segment is not None and (segment.peer, segment.port, segment.seq, segment.payload) == (
        PEER,
        5060,
        1000,
        b"INVITE",
    )
    assert parse(packet(b"INVITE", 1000, destination="198.18.0.2"), VIP) is None
    assert parse(packet(b"INVITE", 1000, protocol=17), VIP) is None
    assert parse(packet(b"INVITE", 1000, fragment=0x2000), VIP) is None  # more fragments
    bare = parse(packet(b"", 1000), VIP)  # a bare ACK: kept for what it says of the handshake, no payload
    assert bare is not None and bare.payload == b""
    assert parse(packet(b"INVITE", 1000)[:30], VIP) is None
    assert parse(b"\x60" + b"\x00" * 60, VIP) is None  # IPv6


def test_the_bytes_after_the_logged_position_run_to_the_first_hole() -> None:
    store = SegmentStore()
    for seq, data in ((100, b"abc"), (103, b"def"), (103, b"def"), (110, b"xyz")):  # a retransmission, a hole
        store.add(Segment(PEER, 5060, seq, data), 0.0)
    assert store.after(PEER, 100) == b"abcdef"
    assert store.after(PEER, 104) == b"ef"  # from inside a segment
    assert store.after(PEER, 106) == b""  # the hole: 106..109 never came
    assert store.after(("198.18.0.11", 1), 100) == b""


def test_sequence_numbers_wrap() -> None:
    store = SegmentStore()
    store.add(Segment(PEER, 5060, 2**32 - 2, b"ab"), 0.0)
    store.add(Segment(PEER, 5060, 0, b"cd"), 0.0)
    assert store.after(PEER, 2**32 - 1) == b"bcd"


def test_old_segments_go_past_the_horizon_and_each_peer_is_bounded() -> None:
    store = SegmentStore(horizon_s=2.0, peer_bytes=10)
    store.add(Segment(PEER, 5060, 0, b"old"), 0.0)
    store.add(Segment(PEER, 5060, 3, b"new"), 3.0)
    assert store.after(PEER, 0) == b"" and store.after(PEER, 3) == b"new"
    store.add(Segment(PEER, 5060, 6, b"0123456789"), 3.0)
    assert store.after(PEER, 3) == b"" and store.after(PEER, 6) == b"0123456789"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_any_mirror_delivery_gives_back_the_stream_up_to_its_first_hole(stream: bytes, data: st.DataObject) -> None:
    base = data.draw(st.integers(0, 2**32 - 1))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8)))) if len(stream) > 1 else []
    pieces = [(start, stream[start:end]) for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    delivered = data.draw(st.lists(st.sampled_from(pieces), max_size=20))  # lost, repeated, out of order
    store = SegmentStore()
    for start, piece in delivered:
        store.add(Segment(PEER, 5060, (base + start) & 0xFFFFFFFF, piece), 0.0)
    have = {start for start, _ in delivered}
    expected = b""
    for start, piece in pieces:
        if start not in have:
            break
        expected += piece
    assert store.after(PEER, base) == expected


def test_the_kernel_filter_passes_tcp_to_the_vip_only() -> None:
    program = tcp_to(VIP)
    assert program[1] == (0x15, 0, 3, 6) and program[3][3] == 0xC6120001 and program[-1] == (0x06, 0, 0, 0)


def handshake_packet(flags: int, seq: int, ack: int, options: bytes = b"", payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", PEER[1], 5060, seq, ack, (5 + len(options) // 4) << 4, flags, 502, 0, 0)
    tcp += options + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     socket.inet_aton(PEER[0]), socket.inet_aton(VIP))  # fmt: skip
    return ip + tcp


# MSS 1460, SACK permitted, timestamps (tsval 111, tsecr 0), NOP, window scale 7
SYN_OPTIONS = bytes.fromhex("020405b40402080a0000006f0000000001030307")
ACK_OPTIONS = bytes.fromhex("0101080a00000070000003e8")  # tsval 112, tsecr 1000


def test_a_connection_the_log_never_named_is_rebuilt_from_its_handshake_and_first_message() -> None:
    store = SegmentStore()
    for raw in (handshake_packet(0x02, 5000, 0, SYN_OPTIONS), handshake_packet(0x10, 5001, 9001, ACK_OPTIONS),
                handshake_packet(0x18, 5001, 9001, ACK_OPTIONS, b"INVITE sip:x SIP/2.0\r\n")):  # fmt: skip
        segment = parse(raw, VIP)
        assert segment is not None
        store.add(segment, 1.0)
    ((peer, base),) = store.unlogged_connections(VIP, {}, now=1.5)
    assert peer == PEER and (base.local_host, base.local_port) == (VIP, 5060)
    assert (base.send_seq, base.recv_seq) == (9001, 5001)  # both sides just past their SYNs
    assert (base.mss, base.send_wscale, base.sack, base.timestamps, base.timestamp) == (1460, 7, True, True, 1000)
    assert base.window[1] == 502 << 7
    assert store.after(peer, base.recv_seq) == b"INVITE sip:x SIP/2.0\r\n"
    assert store.unlogged_connections(VIP, {PEER: base}, now=1.5) == []  # the log named it: not rebuilt twice
    store.add(parse(handshake_packet(0x11, 5023, 9001), VIP), 1.6)  # type: ignore[arg-type]  # FIN: it ended
    assert store.unlogged_connections(VIP, {}, now=1.7) == []


def test_a_syn_the_primary_never_answered_is_not_a_connection() -> None:
    store = SegmentStore()
    store.add(parse(handshake_packet(0x02, 5000, 0, SYN_OPTIONS), VIP), 1.0)  # type: ignore[arg-type]
    assert store.unlogged_connections(VIP, {}, now=1.5) == []


def test_the_peers_last_acknowledgement_trims_what_is_resent_to_what_it_lacks() -> None:
    from sipshadow.replication.streams import Connection, ConnectionBase

    base = ConnectionBase(VIP, 5060, 1000, 5001, 1460, 7, 7, True, True, 0, (0, 0, 0, 0, 0), 0.0)
    connection = Connection(PEER, base)
    connection.send(b"SIP/2.0 180 Ringing\r\n\r\n", 1.0)
    connection.send(b"SIP/2.0 200 OK\r\n\r\n", 1.1)
    assert connection.send_seq == 1000 + 23 + 18
    store = SegmentStore()
    assert store.acknowledged(PEER) is None and connection.unacknowledged(None) == connection.unacknowledged()
    store.add(parse(handshake_packet(0x10, 5001, 1023), VIP), 1.2)  # type: ignore[arg-type]  # had the 180
    assert connection.unacknowledged(store.acknowledged(PEER)) == b"SIP/2.0 200 OK\r\n\r\n"
    store.add(parse(handshake_packet(0x10, 5001, 1041), VIP), 1.3)  # type: ignore[arg-type]  # had both
    assert connection.unacknowledged(store.acknowledged(PEER)) == b""
    assert connection.unacknowledged(999) == connection.unacknowledged()  # older than what is kept: all of it
