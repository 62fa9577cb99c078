"""Version 2 of the pair's frame format: a bounded header, then a handshake or a sealed body.

    magic "SS" | version u8 | kind u8 | length u32 | body (`length` bytes)

The header (`HEADER`, 8 bytes, network byte order) is read before anything else, and a length
over the reader's limit loses the stream before a byte of the body is buffered: until a peer
has authenticated, that limit is `HANDSHAKE_MAX_BODY` (a few hundred bytes), so an
unauthenticated sender can never make this node buffer, copy or decode a large frame.

Kinds: `OFFER` and `ANSWER` are the handshake (`sipshadow.link.handshake`: msgpack, then an
HMAC under the pre-shared key); `SEALED` carries one message of the link's own union, encrypted
and authenticated under a session's keys (`sipshadow.link.session`). This module only splits
bytes into frames; it checks no MAC and decodes no message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

MAGIC = b"SS"
#: 3 since the state digest and the calls' hashes are taken over msgpack (they were text): a
#: node of version 2 computes other digests, so the two must refuse each other, not diverge.
VERSION = 3
HEADER = struct.Struct("!2sBBI")
OFFER, ANSWER, SEALED = 16, 17, 32
KINDS = frozenset({OFFER, ANSWER, SEALED})
#: The largest body a peer that has not authenticated may announce (an Offer or Answer is < 120).
HANDSHAKE_MAX_BODY = 512


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame that must not be applied, returned in its place; `reason` says why (one of
    `sipshadow.link.REASONS`), `detail` what was seen."""

    reason: str
    detail: str = ""


class StreamLost(Exception):
    """The byte stream cannot be framed any more (bad magic, another version, an unknown kind,
    a length over the limit): drop the connection; the reader is of no further use.
    `refused` says why."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(f"{refused.reason}: {refused.detail}")
        self.refused = refused


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One whole frame: its kind, and its bytes from the header's first byte to the body's last."""

    kind: int
    data: bytes


def check_header(data: bytes | bytearray, max_body: int) -> tuple[int, int] | Refused:
    """(kind, whole frame length) from the first `HEADER.size` bytes, or why they are refused."""
    magic, version, kind, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        return Refused("malformed", f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        return Refused("version", f"protocol version {version}, this node speaks {VERSION}")
    if kind not in KINDS:
        return Refused("malformed", f"unknown frame kind {kind}")
    if length > max_body:
        return Refused("oversized", f"{length} bytes announced, at most {max_body} accepted")
    return kind, HEADER.size + length


class FrameReader:
    """Splits a byte stream into `RawFrame`s; buffers at most one frame of `max_body` bytes.

    `max_body` may be raised once the peer has authenticated (the owner sets the attribute).
    """

    def __init__(self, max_body: int = HANDSHAKE_MAX_BODY) -> None:
        self.max_body = max_body
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame (a truncated frame, if the stream ends now)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[RawFrame]:
        """Add stream bytes; yield each whole frame in order. A generator: always consume it.

        Raises `StreamLost` (with the refusal's reason and detail) on a header it cannot accept.
        """
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            checked = check_header(self._buffer, self.max_body)
            if isinstance(checked, Refused):
                raise StreamLost(checked)
            kind, end = checked
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[:end])
            del self._buffer[:end]
            yield RawFrame(kind, frame)


def read_datagram(data: bytes, max_body: int) -> RawFrame | Refused:
    """One whole frame in one datagram, or why not (short, bad header, length disagrees)."""
    if len(data) < HEADER.size:
        return Refused("malformed", f"{len(data)}-byte datagram")
    checked = check_header(data, max_body)
    if isinstance(checked, Refused):
        return checked
    kind, end = checked
    if end != len(data):
        return Refused("malformed", f"header says {end} bytes, datagram has {len(data)}")
    return RawFrame(kind, data)


class MessageCodec:
    """One link's messages: `kinds` maps each message type to its kind byte (u8) inside a sealed
    frame, `union` is what bodies decode to, and `max_body` bounds a sealed frame's body."""

    def __init__(self, kinds: dict[type, int], union: Any, max_body: int) -> None:
        self.kinds = kinds
        self.max_body = max_body
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(union)

    def encode(self, message: Any) -> bytes:
        """Kind byte and msgpack body of `message`. Raises KeyError for a type not in `kinds`."""
        # no bytes `+` in a compiled module (link/session.py says why)
        return b"".join((bytes((self.kinds[type(message)],)), self._encoder.encode(message)))

    def decode(self, plaintext: bytes) -> Any:
        """The message in a sealed frame's opened body, or `Refused` (never raises)."""
        if not plaintext:
            return Refused("undecodable", "empty body")
        try:
            message = self._decoder.decode(plaintext[1:])
        except msgspec.DecodeError as error:
            return Refused("undecodable", str(error))
        if self.kinds.get(type(message)) != plaintext[0]:
            return Refused("undecodable", "kind does not match the body")
        return message
