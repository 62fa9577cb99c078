"""The link framing on its own, with a message union of its own (found by mutation testing:
the codecs of the replication and heartbeat links are built at import, so no test built one)."""

from __future__ import annotations

import hmac

import msgspec
import pytest

from sipshadow.link import HEADER, MAC_BYTES, MAGIC, VERSION, FrameCodec, FrameDecoder, Refused, StreamLost

KEY = b"s" * 32


class Ping(msgspec.Struct, array_like=True, tag=1):
    seq: int


class Note(msgspec.Struct, array_like=True, tag=2):
    text: str


def codec() -> FrameCodec:
    """Built in each test (not at import), so that the test sees the codec's construction."""
    return FrameCodec({Ping: 7, Note: 9}, Ping | Note, max_body_bytes=64)


def forged(kind: int, body: bytes, *, magic: bytes = MAGIC, length: int | None = None) -> bytes:
    """A frame with any header and body, signed with the right key."""
    header = HEADER.pack(magic, VERSION, kind, len(body) if length is None else length)
    return header + body + hmac.digest(KEY, header + body, "sha256")


def test_a_codec_frames_its_own_union_with_its_own_kinds() -> None:
    frame = codec().encode(Note("hello"), KEY)
    body = msgspec.msgpack.encode(Note("hello"))
    assert frame[: HEADER.size] == HEADER.pack(MAGIC, VERSION, 9, len(body))
    assert frame[HEADER.size : -MAC_BYTES] == body
    assert len(frame) == HEADER.size + len(body) + MAC_BYTES
    decoder = FrameDecoder(codec(), KEY)
    assert decoder.open_datagram(frame) == Note("hello")
    assert list(decoder.feed(codec().encode(Ping(3), KEY) + frame)) == [Ping(3), Note("hello")]


def test_a_message_type_outside_the_union_cannot_be_encoded() -> None:
    with pytest.raises(KeyError):
        codec().encode(msgspec.Struct(), KEY)


def test_a_body_of_another_kind_than_its_header_says_is_refused() -> None:
    frame = forged(7, msgspec.msgpack.encode(Note("x")))
    assert FrameDecoder(codec(), KEY).open_datagram(frame) == Refused("frame kind does not match its body")


def test_a_body_that_does_not_decode_is_refused_with_the_decoders_reason() -> None:
    for body in (b"\xc1", msgspec.msgpack.encode(["nope"])):
        refused = FrameDecoder(codec(), KEY).open_datagram(forged(7, body))
        assert isinstance(refused, Refused) and refused.reason.startswith("undecodable body (")
    empty = FrameDecoder(codec(), KEY).open_datagram(forged(7, b""))  # exactly header and MAC
    assert isinstance(empty, Refused) and empty.reason.startswith("undecodable body (")


@pytest.mark.parametrize("size", [0, 1, HEADER.size, HEADER.size + MAC_BYTES - 1])
def test_a_datagram_too_short_for_a_frame_is_refused_as_truncated(size: int) -> None:
    frame = codec().encode(Ping(1), KEY)
    assert FrameDecoder(codec(), KEY).open_datagram(frame[:size]) == Refused("truncated frame")


def test_a_stream_may_announce_a_body_up_to_the_limit_and_not_beyond() -> None:
    text = next("x" * size for size in range(64) if len(msgspec.msgpack.encode(Note("x" * size))) == 64)
    frame = codec().encode(Note(text), KEY)
    assert len(frame) - HEADER.size - MAC_BYTES == 64
    assert list(FrameDecoder(codec(), KEY).feed(frame)) == [Note(text)]
    with pytest.raises(StreamLost, match=r"^bad frame header \(magic b'SS', length 65\)$"):
        list(FrameDecoder(codec(), KEY).feed(forged(9, b"", length=65)))


def test_a_bad_magic_loses_the_stream_as_soon_as_a_header_is_in() -> None:
    decoder = FrameDecoder(codec(), KEY)
    with pytest.raises(StreamLost, match=r"^bad frame header \(magic b'XX', length 3\)$"):
        list(decoder.feed(forged(7, b"", magic=b"XX", length=3)[: HEADER.size]))


def test_a_partial_header_waits_for_more() -> None:
    decoder = FrameDecoder(codec(), KEY)
    frame = codec().encode(Ping(5), KEY)
    assert list(decoder.feed(frame[: HEADER.size - 1])) == []
    assert decoder.pending_bytes == HEADER.size - 1
    assert list(decoder.feed(frame[HEADER.size - 1 :])) == [Ping(5)]
    assert decoder.pending_bytes == 0
