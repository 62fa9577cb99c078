"""The primary's side of replication as a pure state machine: log, batch, output commit.

Every event the core took becomes a log entry (`log.entry_for`) with the next sequence number.
Output commit (DESIGN.md, "Replication"): the datagrams an event produced are released only
once the shadow has acknowledged that event's entry, so the shadow never knows less than the
world has seen. A shadow that leaves an output unacknowledged for `commit_timeout_s`, or that
falls silent on the heartbeat link (`stop_waiting`), is no longer waited for: everything held
is released, and outputs leave at once until it has caught up again (`joining`, below). The
log goes on flowing to it meanwhile, so a shadow that was only slow (a busy host, a pause)
needs no new snapshot; one that never catches up is dropped after `join_timeout_s`, and one
whose link closes at once. While no shadow is
attached nothing is logged or held. Time comes in with the events (`now`, seconds on the
loop's monotonic clock); the asyncio shell (`runtime.primary_link`) only moves bytes.

A shadow joins in two steps, and the primary serves at full rate through both:

1. State transfer. The snapshot is a cut of the state at the Hello (`Gateway.begin_export`);
   its dialog rows leave one frame per loop turn (`take_frames`), copy-on-write, so no turn
   stalls on a big table. Entries logged meanwhile wait behind the rows.
2. Catching up. The shadow restores the rows and replays what was logged since, which takes
   longer than output commit's timeout on a big table. Until its acknowledgements come within
   a quarter of that timeout of the log (`joining`), outputs leave at once, as with no
   shadow; a shadow that has not caught up within `join_timeout_s` is dropped. A joining
   shadow that takes over may miss the last outputs, as a cold standby would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

from sipshadow.core import Event, Gateway, MessageReceived, SendMessage
from sipshadow.core.actions import Address
from sipshadow.core.dialogs import TableExport
from sipshadow.determinism import RecordingEntropy
from sipshadow.replication.effects import Effects
from sipshadow.replication.log import STREAM_CLOSED, STREAM_OPENED, LogEntry, entry_for
from sipshadow.replication.streams import ConnectionBase, StreamLedger, encode_base
from sipshadow.replication.wire import (
    ENTRY_BYTES_PER_FRAME,
    Ack,
    Entries,
    Hello,
    Message,
    PayloadRequest,
    Payloads,
    Snapshot,
    SnapshotRows,
)

#: Dialog rows per snapshot frame, one frame per loop turn: each stays far below the link's size
#: limit and costs the turn a few milliseconds.
SNAPSHOT_ROWS_PER_FRAME = 2000
#: A joining shadow whose acknowledgements trail the log by at most this share of the commit
#: timeout has caught up: output commit starts.
CAUGHT_UP_SHARE = 0.25
#: Seconds a shadow has to take the snapshot (or, when it was no longer waited for, to come
#: back) and catch up with the log before it is dropped. The log it has not acknowledged waits
#: in the primary's memory meanwhile.
JOIN_TIMEOUT_S = 10.0
T = TypeVar("T")

STATS = ("entries_sent", "frames_sent", "acks", "snapshots_sent", "shadow_losses", "commit_timeouts",
         "payloads_sent", "joins", "join_timeouts", "commit_lapses")  # fmt: skip


class Recorder:
    """Logs the primary core's events for one shadow and decides when outputs may leave.

    `record` is the hot path (one call per event); `take_frames` is called once per loop turn
    and returns what to write (while `exporting`, call it again next turn); `receive` takes
    the shadow's messages; `next_deadline` / `on_deadline` run the commit and join timeouts.
    None of them raises on a peer's input.
    """

    def __init__(
        self,
        gateway: Gateway,
        recorder: RecordingEntropy,
        *,
        epoch: int,
        start_seq: int = 0,
        output_commit: bool = True,
        commit_timeout_s: float = 0.2,
        with_payload: bool = True,
        join_timeout_s: float = JOIN_TIMEOUT_S,
    ) -> None:
        self.gateway = gateway
        self.recorder = recorder
        self.epoch = epoch
        self.seq = start_seq
        self.released = start_seq
        self.acked = start_seq
        self.output_commit = output_commit
        self.commit_timeout_s = commit_timeout_s
        self.with_payload = with_payload
        self.join_timeout_s = join_timeout_s
        self.attached = False
        #: The attached shadow has not caught up with the log yet: outputs are not held for it.
        self.joining = False
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self._batch: list[LogEntry] = []
        #: (seq, logged at, outputs) held for the shadow's acknowledgement, oldest first.
        self._pending: deque[tuple[int, float, list[SendMessage]]] = deque()
        #: Tap mode: the datagrams of unacknowledged entries, in case the shadow missed them.
        #: The released mark the shadow was last told (in an entries frame).
        self._released_sent = 0
        self._payloads: deque[tuple[int, bytes]] = deque()
        #: Where each TCP connection stands, as the shadow counts it (`replication.streams`).
        self.streams = StreamLedger()
        #: Bytes of entries written so far, and (last seq, running total, first entry's event
        #: time) per frame written and not yet acknowledged: the replication lag in bytes
        #: (`lag_bytes`) and, while joining, how far behind the log the shadow is.
        self._bytes_written = 0
        self._frame_marks: deque[tuple[int, int, float]] = deque()
        self._bytes_acked = 0
        #: The snapshot's dialog rows still to send (None: no state transfer under way).
        self._cut: TableExport | None = None
        self._join_deadline = 0.0

    @property
    def lag_entries(self) -> int:
        """Entries logged for the shadow and not yet acknowledged (0 with no shadow)."""
        return self.seq - self.acked if self.attached else 0

    @property
    def lag_bytes(self) -> int:
        """Their encoded size, bytes (frame granularity; those still in this turn's batch excluded)."""
        return self._bytes_written - self._bytes_acked if self.attached else 0

    @property
    def exporting(self) -> bool:
        """Snapshot rows are still to be sent: `take_frames` has more next turn."""
        return self._cut is not None

    def pending_since(self, seq: int) -> list[float]:
        """When (loop clock) each entry up to `seq` still holding outputs was logged: an ack for
        `seq` releases them, and the difference is output commit's delay."""
        return [logged_at for held_seq, logged_at, _ in self._pending if held_seq <= seq]

    # -- the event path -------------------------------------------------------------------

    def record(self, event: Event, outputs: list[SendMessage], stream_bytes: int = 0) -> list[SendMessage]:
        """The core handled `event` and produced `outputs`: what may be sent now (the rest is
        held for the shadow's acknowledgement, output commit). `stream_bytes`: for a message
        framed off a TCP connection, the stream bytes it took."""
        self.seq += 1
        draws = self.recorder.take()
        if stream_bytes:
            self.streams.received(event.source, stream_bytes)  # type: ignore[union-attr]
        self.streams.sent(outputs, event.now)
        if not self.attached:
            self.released = self.seq
            return outputs
        state = self.gateway.state_digest()
        entry = entry_for(self.seq, event, draws, state, with_payload=self.with_payload, stream_bytes=stream_bytes)
        self._batch.append(entry)
        if not self.with_payload and type(event) is MessageReceived:
            self._payloads.append((self.seq, event.data))
        if self.joining or not self.output_commit:
            self.released = self.seq
            return outputs
        if outputs:
            self._pending.append((self.seq, event.now, outputs))
        return []

    def record_stream(self, peer: Address, base: ConnectionBase | None, now: float) -> None:
        """A TCP connection to `peer` came up (`base`) or closed (None): an entry, in order with
        the messages, so the shadow's ledger follows. Nothing to send comes of it."""
        self.seq += 1
        if base is not None:
            self.streams.opened(peer, base)
        else:
            self.streams.closed(peer)
        if not self.attached:
            self.released = self.seq
            return
        kind, payload = (STREAM_OPENED, encode_base(base)) if base is not None else (STREAM_CLOSED, None)
        entry = LogEntry(self.seq, kind, now, peer[0], peer[1], payload, state=self.gateway.state_digest())
        self._batch.append(entry)

    def take_frames(self) -> list[Message]:
        """What to write to the shadow this turn. During a state transfer, the next part of the
        snapshot's rows (entries wait behind them). Else the entries logged since the last
        call, as frames: a new frame starts after `ENTRY_BYTES_PER_FRAME` payload bytes, so
        none nears the limit. With nothing logged but outputs released since the last frame,
        one empty frame carries the new mark: the shadow learns at once what it must not
        re-send at takeover (a re-sent INVITE the callee has answered is a retransmission it
        must absorb); none when nothing changed."""
        cut = self._cut
        if cut is not None:
            rows = cut.take(SNAPSHOT_ROWS_PER_FRAME)
            if cut.done:
                self._cut = None
                self.gateway.end_export()
            return [SnapshotRows(rows)]
        if not self._batch:
            if not self.attached or self.released <= self._released_sent:
                return []
            self._released_sent = self.released
            self.stats["frames_sent"] += 1
            return [Entries([], self.released)]
        batch, self._batch = self._batch, []
        self.stats["entries_sent"] += len(batch)
        self._bytes_written += sum(_entry_bytes(entry) for entry in batch)
        self._frame_marks.append((batch[-1].seq, self._bytes_written, batch[0].now))
        frames: list[Message] = [Entries(chunk, self.released) for chunk in _chunks(batch, _entry_bytes)]
        self._released_sent = self.released
        self.stats["frames_sent"] += len(frames)
        return frames

    # -- the shadow's messages ------------------------------------------------------------

    def receive(self, message: Message, now: float) -> Effects:
        """A message from the attached shadow at `now` (loop clock, s); a Hello attaches one
        (see `attach`)."""
        if isinstance(message, Hello):
            return self.attach(now)
        if not self.attached:
            return Effects()
        if isinstance(message, Ack):
            released = self._acknowledged(message.seq)
            if self.joining:
                self._catching_up(message.seq, now)
            return Effects(send=released)
        if isinstance(message, PayloadRequest):
            wanted = set(message.seqs)
            items = [(seq, data) for seq, data in self._payloads if seq in wanted]
            self.stats["payloads_sent"] += len(items)
            chunks = _chunks(items, lambda item: len(item[1])) or [[]]
            return Effects(write=[Payloads(chunk) for chunk in chunks])
        return Effects()

    def _acknowledged(self, seq: int) -> list[SendMessage]:
        """The shadow applied every entry up to `seq`; an ack beyond what was logged counts
        only up to the last entry (a forged or confused peer cannot release the future)."""
        self.stats["acks"] += 1
        seq = min(seq, self.seq)
        self.acked = max(self.acked, seq)
        released: list[SendMessage] = []
        pending = self._pending
        while pending and pending[0][0] <= seq:
            released += pending.popleft()[2]
        self.released = max(self.released, seq)
        payloads = self._payloads
        while payloads and payloads[0][0] <= seq:
            payloads.popleft()
        marks = self._frame_marks
        while marks and marks[0][0] <= seq:
            self._bytes_acked = marks.popleft()[1]
        return released

    def _catching_up(self, seq: int, now: float) -> None:
        """A joining shadow acknowledged `seq` at `now`: output commit starts once every row is
        sent and the oldest entry it has not acknowledged is recent enough."""
        marks = self._frame_marks  # `_acknowledged` has dropped those up to `seq`
        oldest = marks[0][2] if marks else self._batch[0].now if self._batch else now  # unacknowledged
        if self._cut is None and now - oldest <= self.commit_timeout_s * CAUGHT_UP_SHARE:
            self.joining = False
            self.stats["joins"] += 1

    def attach(self, now: float) -> Effects:
        """A shadow said hello at `now`: release what was held for any earlier shadow and send
        it the state after entry `seq`: a Snapshot now, its dialog rows over the next turns
        (`take_frames`), then the entries. It joins (`joining`) until it has caught up."""
        send = self.release_all()
        self._abandon_transfer()
        state, cut = self.gateway.begin_export()
        state["streams"] = self.streams.export_state()
        parts = -(-cut.total // SNAPSHOT_ROWS_PER_FRAME)
        if parts:
            self._cut = cut
        else:
            self.gateway.end_export()
        write: list[Message] = [Snapshot(self.seq, self.epoch, state, parts)]
        self.attached = True
        self.joining = True
        self._join_deadline = now + self.join_timeout_s
        self.acked = self.seq
        self._frame_marks.clear()
        self._bytes_acked = self._bytes_written
        self.stats["snapshots_sent"] += 1
        return Effects(send=send, write=write)

    def detach(self) -> list[SendMessage]:
        """The shadow is gone (its link closed, or it never caught up): run solo, release all held."""
        if not self.attached:
            return []
        self.attached = False
        self._abandon_transfer()
        self.stats["shadow_losses"] += 1
        return self.release_all()

    def _abandon_transfer(self) -> None:
        """Forget what was logged or being sent for the last shadow."""
        self._batch.clear()
        self._payloads.clear()
        self.joining = False
        if self._cut is not None:
            self._cut = None
            self.gateway.end_export()

    def release_all(self) -> list[SendMessage]:
        """Everything held, to be sent now (a new shadow, no shadow, or the node stopping)."""
        released = [output for _, _, outputs in self._pending for output in outputs]
        self._pending.clear()
        self.released = self.seq
        return released

    # -- the commit deadline --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the oldest held output times out, or a joining shadow's time to catch up runs
        out (seconds, loop clock); None when neither is pending."""
        if self.joining:
            return self._join_deadline
        return self._pending[0][1] + self.commit_timeout_s if self._pending else None

    def on_deadline(self, now: float) -> Effects:
        """At or after `next_deadline`: a shadow that has not acknowledged within the commit
        timeout is no longer waited for (`stop_waiting`); one that has not caught up within the
        join timeout is dropped (its link closes; it may come back with a new snapshot)."""
        if self.joining:
            if now < self._join_deadline:
                return Effects()
            self.stats["join_timeouts"] += 1
            return Effects(send=self.detach(),
                           drop=f"shadow did not catch up with the log within {self.join_timeout_s:g} s")  # fmt: skip
        if not self._pending or now < self._pending[0][1] + self.commit_timeout_s:
            return Effects()
        waited_ms = (now - self._pending[0][1]) * 1000
        self.stats["commit_timeouts"] += 1
        return Effects(send=self.stop_waiting(now), lapse=f"shadow did not acknowledge for {waited_ms:.0f} ms")

    def stop_waiting(self, now: float) -> list[SendMessage]:
        """Hold nothing more for the shadow until it catches up again (`joining`, with
        `join_timeout_s` from `now`): it was slow (commit timeout) or silent on the heartbeat
        link. Returns everything held, to be sent now. The log goes on flowing to it: a shadow
        that comes back needs no new snapshot."""
        if not self.attached or self.joining:
            return []
        self.joining = True
        self._join_deadline = now + self.join_timeout_s
        self.stats["commit_lapses"] += 1
        return self.release_all()


def _entry_bytes(entry: LogEntry) -> int:
    return 64 + (len(entry.payload) if entry.payload is not None else 0)


def _chunks(items: list[T], size: Callable[[T], int]) -> list[list[T]]:
    """`items` in order, cut so that each chunk's `size` sum stays under `ENTRY_BYTES_PER_FRAME`
    (an item bigger than that goes alone)."""
    chunks: list[list[T]] = []
    chunk: list[T] = []
    total = 0
    for item in items:
        item_size = size(item)
        if chunk and total + item_size > ENTRY_BYTES_PER_FRAME:
            chunks.append(chunk)
            chunk, total = [], 0
        chunk.append(item)
        total += item_size
    if chunk:
        chunks.append(chunk)
    return chunks
