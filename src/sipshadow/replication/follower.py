"""The shadow's side of replication as a pure state machine: snapshot, replay, acknowledge.

A (re)connection starts with a Hello and the primary's answer is a snapshot (a Snapshot frame,
then its dialog rows in parts), so a divergence, a gap or a restart all heal the same way: the
follower asks its shell to drop the link, and the next connection brings a fresh snapshot.
Entries are applied strictly in log order. In tap mode an entry carries its datagram's digest
and waits for the copy from the tap (`TapBuffer`); after `payload_wait_s` the follower asks
the primary for the copies the tap did not deliver. Time comes in with the calls (`now`,
seconds on the loop's monotonic clock); the asyncio shell (`runtime.shadow_link`) moves bytes.

"Released" (how far the primary has sent outputs) has one entry point, `note_released`, fed
by the entries frames and by the primary's heartbeats; it never runs ahead of what was applied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sipshadow.core import Gateway, GatewayConfig, SendMessage
from sipshadow.core.actions import Address
from sipshadow.determinism import RecordingEntropy
from sipshadow.link import Refused
from sipshadow.replication.effects import Effects
from sipshadow.replication.log import DATAGRAM, LogEntry
from sipshadow.replication.replica import Divergence, Replica
from sipshadow.replication.streams import StreamLedger
from sipshadow.replication.tap import TapBuffer
from sipshadow.replication.wire import (
    Ack,
    Entries,
    Handoff,
    Hello,
    Message,
    PayloadRequest,
    Payloads,
    Snapshot,
    SnapshotRows,
)

STATS = ("snapshots", "entries_applied", "refused_frames", "divergences", "connects", "payload_requests",
         "payloads_received", "gated_outputs")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Handover:
    """What a shadow hands to its own new primary role at takeover.

    `gateway`: the replica's core, as the log left it; `start_seq`: its last applied entry;
    `resend`: outputs the old primary may not have sent (`Replica.unreleased_outputs`);
    `unlogged`: tapped datagrams no entry claimed, in arrival order, to be processed first;
    `stranded`: entries received but not applicable (their payload never came); `streams`:
    the TCP connections to rebuild; `last_now`: the primary's event clock at the last entry;
    `clock_offset`: the primary's event clock less this node's loop clock, as the latest entries
    frame showed it on arrival (the new primary's event clock carries on from it: two hosts'
    monotonic clocks have nothing in common; on one host it is a fraction of a millisecond).
    """

    gateway: Gateway
    start_seq: int
    resend: list[SendMessage]
    unlogged: list[tuple[bytes, Address]]
    stranded: int
    streams: StreamLedger = field(default_factory=StreamLedger)
    last_now: float = 0.0
    clock_offset: float = 0.0


class Follower:
    """Keeps a replica core in step with the primary's log; never raises on the peer's input."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        node_id: str,
        tap: TapBuffer | None = None,
        payload_wait_s: float = 0.01,
    ) -> None:
        self.replica = Replica(config)
        self.node_id = node_id
        self.tap = tap
        self.payload_wait_s = payload_wait_s
        self.synced = False
        self.primary_epoch = 0
        #: The primary's planned handoff, once it came (the shell then takes over).
        self.handoff: Handoff | None = None
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self._waiting: deque[LogEntry] = deque()
        self._payloads: dict[int, bytes] = {}
        self._last_tap_now = 0.0  # the event clock of the last tapped copy (tap horizon arithmetic)
        #: The primary's event clock less ours, at the arrival of the latest entries frame.
        self.clock_offset = 0.0
        self._requested: set[int] = set()
        self._request_at: float | None = None
        self._snapshot: Snapshot | None = None
        self._parts = 0
        self._snapshot_due = False

    @property
    def pending_entries(self) -> int:
        """Entries received and not yet applied (waiting for a tapped copy)."""
        return len(self._waiting)

    # -- the link's life ------------------------------------------------------------------

    def connected(self, epoch: int) -> Effects:
        """A new connection to the primary: introduce ourselves; a snapshot will follow."""
        self.disconnected()
        self.stats["connects"] += 1
        self._snapshot_due = True
        return Effects(write=[Hello(self.node_id, epoch)])

    def disconnected(self) -> None:
        """The link is gone: nothing received from here on counts until the next snapshot."""
        self.synced = False
        self._snapshot_due = False
        self._snapshot, self._parts = None, 0
        self._waiting.clear()
        self._request_at = None

    # -- input ----------------------------------------------------------------------------

    def receive(self, message: Message | Refused, now: float) -> Effects:
        """A message (or a refused frame) from the primary, at `now`."""
        if isinstance(message, Refused):
            self.stats["refused_frames"] += 1
            return Effects()
        if isinstance(message, Snapshot):
            if not self._snapshot_due:  # one per connection: a second one would roll the state back
                self.stats["refused_frames"] += 1
                self.disconnected()
                return Effects(drop="a second snapshot on one connection: refused, reconnecting")
            self.disconnected()
            self._snapshot = message
            if self.tap is not None:
                # The snapshot covers every copy that came before it; those that come while its
                # rows arrive (over several of the primary's turns) are the entries' after it.
                self.tap.clear()
            return self._restoring(lambda: self.replica.begin_restore(message.state), message.parts == 0)
        if isinstance(message, SnapshotRows) and self._snapshot is not None:
            self._parts += 1
            rows = message.rows
            return self._restoring(lambda: self.replica.gateway.import_rows(rows),
                                   self._parts == self._snapshot.parts)  # fmt: skip
        if isinstance(message, Entries) and self.synced:
            if message.entries:
                self.clock_offset = message.entries[-1].now - now
            self._waiting.extend(message.entries)
            effects = self._drain(now)
            self.note_released(message.released)
            return effects
        if isinstance(message, Handoff) and self.synced:
            self.handoff = message  # the shell takes over once it sees it (`ShadowLink.execute`)
            effects = self._drain(now)
            self.note_released(message.seq)  # sent only once every output up to it was out: none is re-sent
            return effects
        if isinstance(message, Payloads) and self.synced:
            self.stats["payloads_received"] += len(message.items)
            self._payloads.update(message.items)
            return self._drain(now)
        return Effects()

    def tapped(self, data: bytes, source: Address, now: float) -> Effects:
        """A copy of a datagram sent to the primary, from the switch's mirror."""
        if self.tap is None:
            return Effects()
        self._last_tap_now = now
        self.tap.add(data, source, now)
        return self._drain(now) if self.synced and self._waiting else Effects()

    def note_released(self, seq: int, now: float | None = None) -> None:
        """The primary has sent the outputs of every entry up to `seq` (from an entries frame
        or a heartbeat); a mark beyond what was applied counts only up to there. With `now`
        (a heartbeat's arrival) the tap also forgets copies past its horizon."""
        if self.synced:
            self.replica.released(min(seq, self.replica.applied_seq))
        if now is not None and self.tap is not None:
            self.tap.prune(now)

    # -- the payload-request timer --------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When to ask the primary for tapped copies that have not come (loop clock)."""
        return self._request_at

    def on_deadline(self, now: float) -> Effects:
        if self._request_at is None or now < self._request_at:
            return Effects()
        self._request_at = None
        missing = [
            entry.seq
            for entry in self._waiting
            if entry.kind == DATAGRAM and entry.payload is None and not self._at_hand(entry)
        ]
        effects = self._drain(now)  # the tap may have delivered meanwhile
        if missing and self._waiting and not effects.drop:
            self._requested.update(missing)
            self.stats["payload_requests"] += 1
            effects.write.append(PayloadRequest(missing))
        return effects

    # -- takeover -------------------------------------------------------------------------

    def hand_over(self, recorder: RecordingEntropy) -> Handover:
        """Stop following: apply what can still be applied, let the core draw live from
        `recorder`, and say what the new primary owes the world."""
        if self.synced:
            self._drain(None)
        stranded = len(self._waiting)
        unlogged = self.tap.unclaimed() if self.tap is not None else []
        self.replica.entropy.go_live(recorder)
        # A planned handoff came after every output was out, from a primary that lives on to
        # let them leave: nothing to send again (a crash may have lost the last ones: re-send).
        resend = [] if self.handoff is not None else self.replica.unreleased_outputs(data for data, _ in unlogged)
        self.disconnected()
        replica = self.replica
        return Handover(replica.gateway, replica.applied_seq, resend, unlogged, stranded, replica.streams,
                        replica.last_now, self.clock_offset)  # fmt: skip

    # -- inside ---------------------------------------------------------------------------

    def _restoring(self, step: Callable[[], None], last: bool) -> Effects:
        """One step of restoring the snapshot into the replica, as its parts arrive (a big table
        built in one turn would stall this node's loop, and its heartbeats, for over 0.5 s);
        then, after the `last`, replay starts. A snapshot that does not fit is refused."""
        try:
            step()
            return self._restore() if last else Effects()
        except Exception as error:  # a misfit row or state: KeyError, TypeError, ValueError, IndexError
            self.stats["refused_frames"] += 1
            self.disconnected()
            return Effects(drop=f"snapshot refused ({type(error).__name__}: {error}): reconnecting")

    def _restore(self) -> Effects:
        """Every part of the snapshot is in: the rest of the replica's state; replay starts."""
        snapshot = self._snapshot
        assert snapshot is not None
        self._snapshot, self._parts = None, 0
        self.replica.finish_restore(snapshot.seq, snapshot.state)
        self._payloads.clear()
        self._requested.clear()
        self.primary_epoch = snapshot.epoch
        self.synced = True
        self.stats["snapshots"] += 1
        return Effects(write=[Ack(snapshot.seq)])

    def _drain(self, now: float | None) -> Effects:
        """Apply waiting entries in order while their payloads are at hand, then acknowledge.
        The one divergence policy: count it, forget the stream, ask for the link to drop."""
        waiting = self._waiting
        replica = self.replica
        applied = 0
        try:
            while waiting:
                entry = waiting[0]
                payload = None
                if entry.kind == DATAGRAM and entry.payload is None:
                    payload = self._payload_for(entry, now)
                    if payload is None:
                        if self._request_at is None and now is not None:
                            self._request_at = now + self.payload_wait_s
                        break
                self.stats["gated_outputs"] += len(replica.apply(entry, payload))
                waiting.popleft()
                applied += 1
        except Divergence as error:
            self.stats["divergences"] += 1
            self.stats["entries_applied"] += applied
            self.disconnected()
            return Effects(drop=f"diverged ({error}): repairing by state transfer")
        if not applied:
            return Effects()
        self.stats["entries_applied"] += applied
        return Effects(write=[Ack(replica.applied_seq)])

    def _payload_for(self, entry: LogEntry, now: float | None) -> bytes | None:
        requested = self._payloads.pop(entry.seq, None)
        tap, digest, source = self.tap, entry.payload_digest, (entry.host, entry.port)
        if tap is None or digest is None:
            return requested
        payload = tap.claim(digest, source)
        if payload is None and requested is not None:
            tap.taken_without_copy(digest, source, now if now is not None else self._last_tap_now)
        return payload if payload is not None else requested

    def _at_hand(self, entry: LogEntry) -> bool:
        if entry.seq in self._payloads or entry.seq in self._requested:
            return True
        tap, digest = self.tap, entry.payload_digest
        return tap is not None and digest is not None and tap.has(digest, (entry.host, entry.port))
