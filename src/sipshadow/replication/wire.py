"""The replication link's messages, sealed per session by `sipshadow.link` (version 3 frames).

Every message travels inside a session (handshake, ChaCha20-Poly1305, strictly increasing
counters); a refused frame closes the connection and the shadow rejoins by state transfer.
No frame's body exceeds `MAX_BODY_BYTES`: snapshots go in parts and the recorder splits a
busy turn's entries (`ENTRY_BYTES_PER_FRAME`), so one frame never holds the loop for long.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sipshadow.link import MessageCodec
from sipshadow.replication.log import LogEntry

#: The largest sealed body either end accepts (an authenticated peer's; before that, 512 bytes).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Payload bytes an Entries or Payloads frame carries before the next frame starts (a quarter of the limit).
ENTRY_BYTES_PER_FRAME = MAX_BODY_BYTES // 4


class Hello(msgspec.Struct, array_like=True, tag=1):
    """A shadow introduces itself; the primary answers with a snapshot."""

    node_id: str
    epoch: int


class Snapshot(msgspec.Struct, array_like=True, tag=2):
    """The core's state after entry `seq`, less its dialogs, which follow in `parts` frames
    (small frames, far below `MAX_BODY_BYTES`, whatever the number of dialogs);
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


class Handoff(msgspec.Struct, array_like=True, tag=9):
    """A planned switchover: the primary took no input after entry `seq`, every output up to
    it is out, and the shadow is to take over now. `token` (forward mode, one host) lets the
    shadow collect the service sockets from the primary (`runtime.handover`); empty in tap mode."""

    seq: int
    epoch: int
    token: bytes = b""


class HandoffRequest(msgspec.Struct, array_like=True, tag=10):
    """The shadow asks the primary to hand off (`sipshadow ctl takeover` on a shadow whose
    primary is alive: keepalived made it MASTER); the primary answers with a `Handoff`."""

    reason: str = ""


Message = Hello | Snapshot | Entries | Ack | PayloadRequest | Payloads | SnapshotRows | Handoff | HandoffRequest
CODEC = MessageCodec(
    {Hello: 1, Snapshot: 2, Entries: 3, Ack: 4, PayloadRequest: 6, Payloads: 7, SnapshotRows: 8, Handoff: 9,
     HandoffRequest: 10},
    Message,
    MAX_BODY_BYTES,
)
