"""The shadow's replay: apply the primary's log entries to a core, check the digests.

The replica never decides anything: the entry says what happened and when, the replaying
entropy supplies the primary's draws, and the state digest after each entry must match.
Outputs are kept for the entries not yet known to be released by the primary, so a
takeover can re-send what the world may not have seen.
"""

from __future__ import annotations

from collections import deque

from sipshadow.core import Gateway, GatewayConfig, SendDatagram
from sipshadow.core.resend import without_stale_provisionals
from sipshadow.determinism import ReplayingEntropy, ReplayMismatch
from sipshadow.replication.log import LogEntry, event_for


class Divergence(RuntimeError):
    """The shadow's state no longer matches the primary's; a state transfer repairs it."""


class Replica:
    """A core driven only by log entries."""

    def __init__(self, config: GatewayConfig, *, keep_outputs: int = 4096) -> None:
        self.entropy = ReplayingEntropy()
        self.gateway = Gateway(config, self.entropy)
        self.applied_seq = 0
        self.released_seq = 0
        self.divergences = 0
        self._outputs: deque[tuple[int, list[SendDatagram]]] = deque(maxlen=keep_outputs)

    def restore(self, seq: int, state: dict[str, object]) -> None:
        """Start from a snapshot taken after entry `seq`."""
        self.gateway.import_state(state)
        self.applied_seq = self.released_seq = seq
        self._outputs.clear()

    def apply(self, entry: LogEntry, payload: bytes | None = None) -> list[SendDatagram]:
        """Replay one entry; raises Divergence if it is out of order or the states differ."""
        if entry.seq != self.applied_seq + 1:
            raise Divergence(f"expected entry {self.applied_seq + 1}, got {entry.seq}")
        self.entropy.load(entry.draws)
        try:
            outputs = self.gateway.handle(event_for(entry, payload))
            self.entropy.finish()
        except ReplayMismatch as error:
            self.divergences += 1
            raise Divergence(f"entry {entry.seq}: {error}") from error
        except Exception:  # the primary's core failed the same way on this event (a bug, logged there)
            outputs = []
        self.applied_seq = entry.seq
        if outputs:
            self._outputs.append((entry.seq, outputs))
        digest = self.gateway.state_digest()
        if digest != entry.state:
            self.divergences += 1
            raise Divergence(f"entry {entry.seq}: state digest {digest:#x} != primary's {entry.state:#x}")
        return outputs

    def released(self, seq: int) -> None:
        """The primary says it has sent the outputs of every entry up to `seq`."""
        self.released_seq = max(self.released_seq, seq)
        while self._outputs and self._outputs[0][0] <= self.released_seq:
            self._outputs.popleft()

    def unreleased_outputs(self) -> list[SendDatagram]:
        """What a new primary re-sends: outputs the old one may not have sent (duplicates are
        harmless in SIP), less provisionals their own final response in the list makes stale."""
        unreleased = [output for seq, outputs in self._outputs if seq > self.released_seq for output in outputs]
        return without_stale_provisionals(unreleased)
