"""The replication link's messages, framed by `sipshadow.link` (versioned, HMAC-SHA256'd).

A refused frame (bad HMAC, unknown version) is counted and never applied; a lost stream (bad
magic, a length over `MAX_BODY_BYTES`) drops the connection and the shadow rejoins by state
transfer. Kind 5 is the heartbeat's (`sipshadow.detect`), on its own UDP link.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sipshadow.link import HEADER, MAC_BYTES, MAGIC, VERSION, FrameCodec, Refused, StreamLost
from sipshadow.link import FrameDecoder as _FrameDecoder
from sipshadow.replication.log import LogEntry

__all__ = [
    "HEADER", "MAC_BYTES", "MAGIC", "VERSION", "Ack", "Entries", "FrameDecoder", "Hello", "Message", "PayloadRequest",
    "Payloads", "Refused", "Snapshot", "SnapshotRows", "StreamLost", "encode",
]  # fmt: skip

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


class PayloadRequest(msgspec.Struct, array_like=True, tag=6):
    """Tap mode: the shadow missed these entries' datagrams on the tap; send them."""

    seqs: list[int]


class Payloads(msgspec.Struct, array_like=True, tag=7):
    """The primary's answer: (seq, datagram) for each requested entry it still holds."""

    items: list[tuple[int, bytes]]


Message = Hello | Snapshot | Entries | Ack | PayloadRequest | Payloads | SnapshotRows
CODEC = FrameCodec(
    {Hello: 1, Snapshot: 2, Entries: 3, Ack: 4, PayloadRequest: 6, Payloads: 7, SnapshotRows: 8},
    Message,
    MAX_BODY_BYTES,
)


def encode(message: Message, key: bytes, version: int = VERSION) -> bytes:
    """One replication frame (`sipshadow.link`)."""
    return CODEC.encode(message, key, version)


class FrameDecoder(_FrameDecoder):
    """The replication link's stream decoder."""

    def __init__(self, key: bytes) -> None:
        super().__init__(CODEC, key)
