"""The shadow's replay: apply the primary's log entries to a core, check the digests.

The replica never decides anything: the entry says what happened and when, the replaying
entropy supplies the primary's draws, and the state digest after each entry must match.
Outputs are kept for the entries not yet known to be released by the primary, so a
takeover can re-send what the world may not have seen.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

from sipshadow.core import Gateway, GatewayConfig, SendMessage
from sipshadow.core.actions import TCP
from sipshadow.core.events import MessageReceived
from sipshadow.core.resend import resend_plan
from sipshadow.determinism import ReplayingEntropy, ReplayMismatch
from sipshadow.replication.log import STREAM_CLOSED, STREAM_OPENED, LogEntry, event_for
from sipshadow.replication.streams import StreamLedger, decode_base, peer_for


class Divergence(RuntimeError):
    """The shadow's state no longer matches the primary's; a state transfer repairs it."""


#: Outputs released this close (primary's clock, seconds) before its last logged event are
#: re-sent too: "released" means handed to the kernel, and a node that dies at once (links
#: down) loses what was still queued. Requests a response proves delivered are not re-sent.
RESEND_WINDOW_S = 0.02


class Replica:
    """A core driven only by log entries."""

    def __init__(self, config: GatewayConfig, *, keep_outputs: int = 4096) -> None:
        self.entropy = ReplayingEntropy()
        self.gateway = Gateway(config, self.entropy)
        self.applied_seq = 0
        self.released_seq = 0
        self._outputs: deque[tuple[int, float, list[SendMessage]]] = deque(maxlen=keep_outputs)
        self._last_now = 0.0
        #: Responses received since the oldest output still kept: proof of what was delivered.
        self._responses: deque[tuple[int, bytes]] = deque(maxlen=keep_outputs)
        #: Where each TCP connection stands (`replication.streams`), for a takeover to rebuild.
        self.streams = StreamLedger()

    def restore(self, seq: int, state: dict[str, Any]) -> None:
        """Start from a snapshot taken after entry `seq` (its rows in `state["dialogs"]`)."""
        self.begin_restore(state)
        self.gateway.import_rows(state["dialogs"])
        self.finish_restore(seq, state)

    def begin_restore(self, state: dict[str, Any]) -> None:
        """A snapshot's state without its rows; they follow (`gateway.import_rows`, a part at a
        time), then `finish_restore`. Raises what `Gateway.import_state` raises."""
        self.gateway.begin_import(state)

    def finish_restore(self, seq: int, state: dict[str, Any]) -> None:
        """Every row is in: the rest of the snapshot taken after entry `seq`; replay starts."""
        self.gateway.finish_import(state)
        self.streams.import_state(state.get("streams", []))
        self.applied_seq = self.released_seq = seq
        self._outputs.clear()
        self._responses.clear()

    def apply(self, entry: LogEntry, payload: bytes | None = None) -> list[SendMessage]:
        """Replay one entry; raises Divergence if it is out of order or the states differ."""
        if entry.seq != self.applied_seq + 1:
            raise Divergence(f"expected entry {self.applied_seq + 1}, got {entry.seq}")
        if entry.kind == STREAM_OPENED or entry.kind == STREAM_CLOSED:
            self._follow_stream(entry)
            outputs: list[SendMessage] = []
        else:
            outputs = self._replay(entry, payload)
        self.applied_seq = entry.seq
        self._last_now = entry.now
        digest = self.gateway.state_digest()
        if digest != entry.state:
            raise Divergence(f"entry {entry.seq}: state digest {digest:#x} != primary's {entry.state:#x}")
        return outputs

    def _replay(self, entry: LogEntry, payload: bytes | None) -> list[SendMessage]:
        """An event of the primary's core: the same event into this core, with its draws."""
        self.entropy.load(entry.draws)
        event = event_for(entry, payload)
        if type(event) is MessageReceived and event.data.startswith(b"SIP/2.0 "):
            self._responses.append((entry.seq, event.data))
        try:
            outputs = self.gateway.handle(event)
            self.entropy.finish()
        except ReplayMismatch as error:
            raise Divergence(f"entry {entry.seq}: {error}") from error
        except Exception:  # the primary's core failed the same way on this event (a bug, logged there)
            outputs = []
        if entry.stream_bytes:
            self.streams.received((entry.host, entry.port), entry.stream_bytes)
        if outputs:
            self.streams.sent(outputs, entry.now)
            self._outputs.append((entry.seq, entry.now, outputs))
        return outputs

    def _follow_stream(self, entry: LogEntry) -> None:
        """A connection opened or closed on the primary: the ledger follows; the core never knows."""
        peer = (entry.host, entry.port)
        if entry.kind == STREAM_CLOSED:
            self.streams.closed(peer)
            return
        try:
            self.streams.opened(peer, decode_base(entry.payload or b""))
        except (ValueError, TypeError) as error:  # msgspec's errors are ValueErrors
            raise Divergence(f"entry {entry.seq}: unreadable connection base: {error}") from error

    @property
    def last_now(self) -> float:
        """The primary's event clock at the last entry applied (s)."""
        return self._last_now

    def released(self, seq: int) -> None:
        """The primary says it has sent the outputs of every entry up to `seq`."""
        self.released_seq = max(self.released_seq, seq)
        recent = self._last_now - RESEND_WINDOW_S
        while self._outputs and self._outputs[0][0] <= self.released_seq and self._outputs[0][1] < recent:
            self._outputs.popleft()
        oldest = self._outputs[0][0] if self._outputs else self.released_seq + 1
        while self._responses and self._responses[0][0] < oldest:
            self._responses.popleft()

    def unreleased_outputs(self, seen_since: Iterable[bytes] = ()) -> list[SendMessage]:
        """What a new primary re-sends: outputs the old one may not have sent (unreleased, or
        released in the last `RESEND_WINDOW_S`), less what the responses logged since (and
        `seen_since`, the unlogged tap) prove delivered and less stale provisionals
        (`core.resend`)."""
        recent = self._last_now - RESEND_WINDOW_S
        live = self.streams.connections
        unreleased = [
            output
            for seq, now, outputs in self._outputs
            if seq > self.released_seq or now >= recent
            for output in outputs
            # on a connection the takeover rebuilds, the send queue holds them (exactly once)
            if output[2] != TCP or peer_for(output, live) not in live
        ]
        seen = itertools.chain((data for _, data in self._responses), seen_since)
        return resend_plan(unreleased, seen)
