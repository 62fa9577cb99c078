"""Versioned, length-prefixed, HMAC-SHA256'd frames for any union of tagged msgspec structs.

    magic "SS" | version u8 | kind u8 | body length u32 | body (msgpack) | HMAC-SHA256 (32 bytes)

The header (`HEADER`) is 8 bytes in network byte order; the length counts body bytes only.
The HMAC covers header and body under the pair's shared key. A frame whose HMAC fails, or
whose version this node does not speak, or whose body does not decode to the kind its header
names, is refused: a `Refused` value comes back in its place (the caller counts and logs it,
never applies it) and the stream goes on, since the length still frames it. A bad magic or a
length over the codec's limit means the stream itself is lost: `StreamLost` is raised and the
caller drops the connection. On a datagram link each frame stands alone, so there is no
stream to lose: every fault is `Refused`.

Each link owns its message union and kind numbers (`FrameCodec`); this module knows none of
them, so the failure detector and the replication log share the format, not each other.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

MAGIC = b"SS"
VERSION = 1
HEADER = struct.Struct("!2sBBI")
MAC_BYTES = 32


class StreamLost(Exception):
    """The byte stream cannot be framed any more (bad magic, or a length over the limit): drop
    the connection; the decoder is of no further use."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame that must not be applied, returned in its place; `reason` says why (bad HMAC,
    unsupported version, undecodable body, kind mismatch, or a malformed datagram)."""

    reason: str


class FrameCodec:
    """One link's messages: `kinds` maps each message type to its frame kind (u8), `union` is
    what the body decodes to, and `max_body_bytes` bounds what a stream may announce."""

    def __init__(self, kinds: dict[type, int], union: Any, max_body_bytes: int) -> None:
        self.kinds = kinds
        self.max_body_bytes = max_body_bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(union)

    def encode(self, message: Any, key: bytes, version: int = VERSION) -> bytes:
        """One frame as bytes: header, msgpack body, HMAC over both under `key`.

        `version` is for tests that forge another one. Raises KeyError for a message type not
        in `kinds`.
        """
        body = self._encoder.encode(message)
        header = HEADER.pack(MAGIC, version, self.kinds[type(message)], len(body))
        return header + body + hmac.digest(key, header + body, "sha256")

    def open(self, frame: bytes, version: int, kind: int, key: bytes) -> Any:
        """The message in a whole frame, or `Refused` (bad HMAC first, then version, body, kind).

        `frame` is header, body and MAC; `version` and `kind` come from its header. Never raises.
        """
        signed, mac = frame[:-MAC_BYTES], frame[-MAC_BYTES:]
        if not hmac.compare_digest(hmac.digest(key, signed, "sha256"), mac):
            return Refused("bad HMAC")
        if version != VERSION:
            return Refused(f"unsupported protocol version {version}")
        try:
            message = self._decoder.decode(signed[HEADER.size :])
        except msgspec.DecodeError as error:
            return Refused(f"undecodable body ({error})")
        if self.kinds.get(type(message)) != kind:
            return Refused("frame kind does not match its body")
        return message


class FrameDecoder:
    """Turns a byte stream (or single datagrams) into messages; yields `Refused` for frames it
    will not apply and raises `StreamLost` when the stream can no longer be framed."""

    def __init__(self, codec: FrameCodec, key: bytes) -> None:
        self.codec = codec
        self.key = key
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame (a truncated frame, if the stream ends now)."""
        return len(self._buffer)

    def open_datagram(self, data: bytes) -> Any:
        """One whole frame in one datagram (the heartbeat link): the message or `Refused`,
        never raises (a short datagram, a bad magic or a length that disagrees is `Refused`)."""
        if len(data) < HEADER.size + MAC_BYTES:
            return Refused("truncated frame")
        magic, version, kind, length = HEADER.unpack_from(data)
        if magic != MAGIC or len(data) != HEADER.size + length + MAC_BYTES:
            return Refused("bad frame header")
        return self.codec.open(data, version, kind, self.key)

    def feed(self, data: bytes) -> Iterator[Any]:
        """Add stream bytes; yield each whole frame's message or `Refused`, in order. A partial
        frame waits for the next feed. A generator: nothing happens until it is iterated, so
        always consume it. Raises `StreamLost` (see the module docstring)."""
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            magic, version, kind, length = HEADER.unpack_from(self._buffer)
            if magic != MAGIC or length > self.codec.max_body_bytes:
                raise StreamLost(f"bad frame header (magic {magic!r}, length {length})")
            end = HEADER.size + length + MAC_BYTES
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[:end])
            del self._buffer[:end]
            yield self.codec.open(frame, version, kind, self.key)
