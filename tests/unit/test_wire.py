"""The replication wire format: frames round-trip; bad ones are refused, and the stream goes on."""

from __future__ import annotations

import pytest

from sipshadow.replication.log import LogEntry
from sipshadow.replication.wire import (
    HEADER,
    Ack,
    Entries,
    FrameDecoder,
    Hello,
    Refused,
    Snapshot,
    StreamLost,
    encode,
)

KEY = b"k" * 32
ENTRIES = Entries([LogEntry(1, 0, 1.5, "127.0.0.1", 5060, b"INVITE ...", None, (0.25,), 77)], released=0)


def test_every_message_kind_round_trips_through_one_stream() -> None:
    messages = [Hello("shadow-1", 3), Snapshot(7, 3, {"dialogs": []}), ENTRIES, Ack(7)]
    stream = b"".join(encode(message, KEY) for message in messages)
    decoder = FrameDecoder(KEY)
    received = [m for chunk in (stream[:5], stream[5:40], stream[40:]) for m in decoder.feed(chunk)]
    assert received == messages


def test_a_frame_with_a_bad_hmac_is_refused_and_the_next_frame_still_arrives() -> None:
    forged = encode(ENTRIES, b"x" * 32)
    decoder = FrameDecoder(KEY)
    assert list(decoder.feed(forged + encode(Ack(1), KEY))) == [Refused("bad HMAC"), Ack(1)]


def test_a_flipped_byte_in_the_body_fails_the_hmac() -> None:
    frame = bytearray(encode(ENTRIES, KEY))
    frame[HEADER.size + 3] ^= 0x01
    assert list(FrameDecoder(KEY).feed(bytes(frame))) == [Refused("bad HMAC")]


def test_a_frame_from_a_future_protocol_version_is_refused() -> None:
    frame = encode(Ack(1), KEY, version=2)
    assert list(FrameDecoder(KEY).feed(frame + encode(Ack(2), KEY))) == [
        Refused("unsupported protocol version 2"),
        Ack(2),
    ]


def test_a_truncated_frame_is_held_not_applied() -> None:
    frame = encode(ENTRIES, KEY)
    decoder = FrameDecoder(KEY)
    assert list(decoder.feed(frame[:-10])) == []
    assert decoder.pending_bytes == len(frame) - 10  # on connection loss: counted as truncated
    assert FrameDecoder(KEY).open_datagram(frame[:-10]) == Refused("bad frame header")


def test_garbage_loses_the_stream() -> None:
    with pytest.raises(StreamLost):
        list(FrameDecoder(KEY).feed(b"GET / HTTP/1.1\r\n\r\n"))


def test_a_heartbeat_frames_on_its_own_link_and_is_refused_on_the_replication_link() -> None:
    """The heartbeat's codec lives in `detect/`; the format is shared, the message unions are not."""
    from sipshadow.detect.heartbeat import CODEC, Heartbeat
    from sipshadow.link import FrameDecoder as LinkDecoder

    beat = Heartbeat("p", 1, "primary", 9)
    frame = CODEC.encode(beat, KEY)
    assert LinkDecoder(CODEC, KEY).open_datagram(frame) == beat
    assert isinstance(FrameDecoder(KEY).open_datagram(frame), Refused)
    assert isinstance(LinkDecoder(CODEC, KEY).open_datagram(encode(Ack(1), KEY)), Refused)
