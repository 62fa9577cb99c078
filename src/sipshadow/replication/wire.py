"""The replication link's wire format: versioned, length-prefixed, HMAC-SHA256'd frames.

    magic "SS" | version u8 | kind u8 | body length u32 | body (msgpack) | HMAC-SHA256 (32 bytes)

The HMAC covers header and body under the pair's shared key. A frame whose HMAC fails, or
whose version this node does not speak, is refused (counted, logged, never applied) and the
stream goes on, since the length still frames it. A bad magic or an absurd length means the
stream itself is lost: the connection is dropped and the shadow rejoins by state transfer.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from sipshadow.replication.log import LogEntry

MAGIC = b"SS"
VERSION = 1
HEADER = struct.Struct("!2sBBI")
MAC_BYTES = 32
MAX_BODY_BYTES = 256 * 1024 * 1024  # a snapshot of millions of dialogs still fits


class Hello(msgspec.Struct, array_like=True, tag=1):
    """A shadow introduces itself; the primary answers with a snapshot."""

    node_id: str
    epoch: int


class Snapshot(msgspec.Struct, array_like=True, tag=2):
    """The core's state after entry `seq`, less its dialogs, which follow in `parts` frames
    (small frames: the sender's loop and heartbeat thread never wait on one huge encode);
    entries from `seq + 1` come after them."""

    seq: int
    epoch: int
    state: dict[str, Any]
    parts: int = 0


class SnapshotRows(msgspec.Struct, array_like=True, tag=8):
    """One part of a snapshot's dialog rows."""

    rows: list[Any]


class Entries(msgspec.Struct, array_like=True, tag=3):
    """A loop turn's worth of log entries, and how far the primary has released outputs."""

    entries: list[LogEntry]
    released: int


class Ack(msgspec.Struct, array_like=True, tag=4):
    """The shadow has applied every entry up to `seq`."""

    seq: int


class Heartbeat(msgspec.Struct, array_like=True, tag=5):
    """One UDP datagram on the heartbeat link: who I am, my role, how far I have released."""

    node_id: str
    epoch: int
    role: str
    released: int


class PayloadRequest(msgspec.Struct, array_like=True, tag=6):
    """Tap mode: the shadow missed these entries' datagrams on the tap; send them."""

    seqs: list[int]


class Payloads(msgspec.Struct, array_like=True, tag=7):
    """The primary's answer: (seq, datagram) for each requested entry it still holds."""

    items: list[tuple[int, bytes]]


Message = Hello | Snapshot | Entries | Ack | Heartbeat | PayloadRequest | Payloads | SnapshotRows
_KIND_OF: dict[type, int] = {
    Hello: 1, Snapshot: 2, Entries: 3, Ack: 4, Heartbeat: 5, PayloadRequest: 6, Payloads: 7, SnapshotRows: 8
}
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class StreamLost(Exception):
    """The byte stream cannot be framed any more; drop the connection."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame that was framed correctly but must not be applied."""

    reason: str


def encode(message: Message, key: bytes, version: int = VERSION) -> bytes:
    body = _encoder.encode(message)
    header = HEADER.pack(MAGIC, version, _KIND_OF[type(message)], len(body))
    return header + body + hmac.digest(key, header + body, "sha256")


class FrameDecoder:
    """Turns a TCP byte stream into messages; yields `Refused` for frames it will not apply."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame (a truncated frame, if the stream ends now)."""
        return len(self._buffer)

    def open_datagram(self, data: bytes) -> Message | Refused:
        """One whole frame in one datagram (the heartbeat link)."""
        if len(data) < HEADER.size + MAC_BYTES:
            return Refused("truncated frame")
        magic, version, kind, length = HEADER.unpack_from(data)
        if magic != MAGIC or len(data) != HEADER.size + length + MAC_BYTES:
            return Refused("bad frame header")
        return self._open(data, version, kind, length)

    def feed(self, data: bytes) -> Iterator[Message | Refused]:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            magic, version, kind, length = HEADER.unpack_from(self._buffer)
            if magic != MAGIC or length > MAX_BODY_BYTES:
                raise StreamLost(f"bad frame header (magic {magic!r}, length {length})")
            end = HEADER.size + length + MAC_BYTES
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[:end])
            del self._buffer[:end]
            yield self._open(frame, version, kind, length)

    def _open(self, frame: bytes, version: int, kind: int, length: int) -> Message | Refused:
        signed, mac = frame[:-MAC_BYTES], frame[-MAC_BYTES:]
        if not hmac.compare_digest(hmac.digest(self.key, signed, "sha256"), mac):
            return Refused("bad HMAC")
        if version != VERSION:
            return Refused(f"unsupported protocol version {version}")
        try:
            message: Message = _decoder.decode(signed[HEADER.size :])
        except msgspec.DecodeError as error:
            return Refused(f"undecodable body ({error})")
        if _KIND_OF[type(message)] != kind:
            return Refused("frame kind does not match its body")
        return message
