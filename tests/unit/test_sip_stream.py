"""SIP over a stream (RFC 3261 §18.3, §7.5; RFC 5626 §3.5.1): the framer alone, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.core.replies import salvage_reply
from sipshadow.sip import parse_message
from sipshadow.sip.stream import PING, Framed, KeepAlive, StreamFramer, Unframable, content_length


def message(body: bytes = b"", *, length: str | None = None, call_id: str = "c1", extra: str = "") -> bytes:
    """An INVITE with `body` and a Content-Length (given, or the body's; `length=""` omits it)."""
    head = (f"INVITE sip:bob@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:5070;branch=z9hG4bK{call_id}\r\n"
            f"From: <sip:alice@example.org>;tag=a\r\nTo: <sip:bob@example.org>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}")  # fmt: skip
    if length != "":
        head += f"Content-Length: {len(body) if length is None else length}\r\n"
    return (head + "\r\n").encode() + body


SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def test_one_message_comes_out_whole_with_exactly_its_body() -> None:
    data = message(SDP)
    assert StreamFramer().feed(data) == [Framed(data)]
    parsed = parse_message(data)
    parsed.frame_datagram()
    assert parsed.body == SDP


def test_messages_and_pings_come_out_in_order_and_a_lone_crlf_is_ignored() -> None:
    first, second = message(SDP, call_id="c1"), message(call_id="c2")
    framer = StreamFramer()
    assert framer.feed(first + PING + b"\r\n" + second) == [Framed(first), KeepAlive(), Framed(second)]
    assert framer.pending_bytes == 0


def test_a_body_beyond_the_message_starts_the_next_one() -> None:
    """Bytes after Content-Length are the next message's (a datagram would drop them)."""
    framer = StreamFramer()
    data = message(SDP) + b"INVITE"
    assert framer.feed(data) == [Framed(message(SDP))]
    assert framer.pending_bytes == len(b"INVITE")


def test_a_half_ping_waits_and_a_crlf_then_a_start_line_is_no_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [KeepAlive()]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(message()) == [Framed(message())]


@pytest.mark.parametrize(
    ("head_extra", "length", "expected"),
    [
        ("l: 5\r\n", "", 5),  # compact form
        ("Content-Length:\r\n 5\r\n", "", 5),  # folded
        ("Content-Length: 5\r\n", "5", 5),  # twice, equal
    ],
)
def test_content_length_in_its_other_spellings(head_extra: str, length: str, expected: int) -> None:
    data = message(extra=head_extra, length=length)
    assert content_length(data[: data.index(b"\r\n\r\n") + 2]) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (message(SDP, length=""), "Missing Content-Length"),
        (message(b"", length="abc"), "Bad Content-Length"),
        (message(b"", length="-1"), "Bad Content-Length"),
        (message(b"", length="12345678901"), "Bad Content-Length"),
        (message(b"", extra="Content-Length: 3\r\n"), "Multiple Content-Length"),
    ],
)
def test_a_message_that_cannot_be_framed_breaks_the_stream_with_its_head(data: bytes, reason: str) -> None:
    framer = StreamFramer()
    [fault] = framer.feed(data + message(call_id="after"))
    assert isinstance(fault, Unframable) and fault.reason.startswith(reason)
    assert fault.head.startswith(b"INVITE sip:bob@192.0.2.1 SIP/2.0\r\n") and fault.head.endswith(b"\r\n")
    assert framer.broken and framer.feed(message()) == []  # nothing after it can be trusted


def test_a_request_that_cannot_be_framed_can_still_be_answered_400() -> None:
    [fault] = StreamFramer().feed(message(SDP, length=""))
    assert isinstance(fault, Unframable)
    salvaged = salvage_reply(fault.head + b"\r\n", 400, "Missing Content-Length")
    assert salvaged is not None
    reply, via = salvaged
    assert parse_message(reply).status == 400 and via.transport == "TCP"


def test_a_huge_content_length_is_refused_before_a_byte_of_its_body_is_held() -> None:
    framer = StreamFramer(max_body_bytes=64 * 1024)
    [fault] = framer.feed(message(b"", length=str(10 * 1024 * 1024)))
    assert isinstance(fault, Unframable) and "10485760" in fault.reason
    assert framer.pending_bytes == 0


def test_a_header_block_without_end_is_refused_once_it_passes_the_limit() -> None:
    framer = StreamFramer(max_head_bytes=1024)
    assert framer.feed(b"INVITE sip:x SIP/2.0\r\n" + b"X: " + b"y" * 900) == []
    [fault] = framer.feed(b"y" * 200)
    assert isinstance(fault, Unframable) and "header block" in fault.reason


def test_a_slow_sender_byte_by_byte_frames_the_same_message() -> None:
    data = message(SDP, extra="X-Padding: " + "p" * 8000 + "\r\n")
    framer = StreamFramer()
    out = [item for index in range(len(data)) for item in framer.feed(data[index : index + 1])]
    assert out == [Framed(data)]


def test_pending_bytes_counts_a_message_begun_not_the_crlfs_between() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert framer.pending_bytes == 0
    framer.feed(message(SDP)[:50])
    assert framer.pending_bytes == 50  # the message's 50 bytes; the lone CRLF before it was dropped


stream_items = st.lists(
    st.one_of(
        st.builds(lambda body, n: message(body, call_id=f"c{n}"), st.binary(max_size=300), st.integers(0, 999)),
        st.just(PING),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(items=stream_items, cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=12))
def test_how_the_bytes_are_cut_never_changes_what_comes_out(items: list[bytes], cuts: list[int]) -> None:
    """Whatever the segment boundaries, the same messages and pings, in order."""
    stream = b"".join(items)
    expected = [KeepAlive() if item == PING else Framed(item) for item in items]
    points = sorted({cut % len(stream) for cut in cuts} - {0})
    framer = StreamFramer()
    out = []
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        out += framer.feed(stream[start:end])
    assert out == expected
    assert StreamFramer().feed(stream) == expected


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_garbage_never_raises_and_only_breaks_the_one_stream(data: bytes) -> None:
    framer = StreamFramer(max_head_bytes=1024, max_body_bytes=1024)
    for item in framer.feed(data):
        assert isinstance(item, Framed | KeepAlive | Unframable)


def test_each_item_says_how_many_stream_bytes_it_took_so_a_replica_knows_the_offset() -> None:
    first, second = message(), message(SDP)
    stream = b"\r\n" + first + PING + b"\r\n\r\n\r\n" + second
    items = StreamFramer().feed(stream)
    assert items == [Framed(first), KeepAlive(), KeepAlive(), Framed(second)]
    assert [item.consumed for item in items] == [2 + len(first), 4, 4, 2 + len(second)]  # type: ignore[union-attr]
    assert sum(item.consumed for item in items) == len(stream)  # type: ignore[union-attr]
