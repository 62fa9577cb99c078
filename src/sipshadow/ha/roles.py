"""A node's HA role as a pure state machine: (role, input) → (actions, next role).

The shell (`runtime.ha`) feeds inputs from the heartbeat detectors, the arbiter, its own
timers and the outcome of the actions it ran; it decides nothing itself. The table:

    role          input                          → actions                       next role
    starting      Started(configured primary)    → Listen(window)                starting
    starting      Started(configured shadow)     → Follow                        shadow
    starting      PeerBeat(role primary)         → (remember it)                 starting
    starting      ListenElapsed, primary heard   → Follow                        shadow
    starting      ListenElapsed, none heard      → ServePrimary(epoch)           primary
    shadow        PeerSilent, no arbiter alive   → TakeOver(claimed epoch)       taking-over
    shadow        PeerSilent, arbiter alive      → (held; ArbiterSilent retries) shadow
    shadow        PeerSilent, holding            → (HoldElapsed retries)         shadow
    shadow        ArbiterSilent / HoldElapsed    → TakeOver if the peer is silent taking-over
    shadow        PeerBeat(shadow), lower node id → TakeOver (unless holding)     taking-over
    taking-over   TakeoverDone                   → —                             primary
    taking-over   TakeoverFailed                 → Follow, Hold(ABORT_HOLD_S)    shadow
    shadow        TakeoverOrdered                → TakeOver(claimed epoch)       taking-over
    primary       PeerSilent                     → StopWaitingForShadow          primary
    primary       StandbyOrdered                 → StepDown, Follow              shadow
    fenced        StandbyOrdered                 → StepDown, Follow              shadow
    primary       PeerBeat(primary, newer)       → StepDown, Follow              shadow
    primary       Stalled(longer than window)    → Fence, Hold(window)           fenced
    fenced        PeerBeat(primary, newer)       → StepDown, Follow              shadow
    fenced        PeerSilent                     → Unfence, StopWaitingForShadow primary
    fenced        HoldElapsed                    → Unfence                       primary

Any other (role, input) pair changes nothing but what the node knows (peer alive, arbiter
alive, highest epoch seen). With an external detector (`detects=False`: keepalived decides),
silence never starts a takeover; only `TakeoverOrdered` does. "Newer" compares (epoch,
node id): a higher epoch wins, and at equal epochs (two nodes both configured primary)
the lower node id keeps serving. Two shadows serve no one: the one with the lower node id takes over.

Epochs: a node claims only epochs of its rank's parity (rank 0 = configured primary, rank 1 =
configured shadow), always above any epoch it has seen, so two correctly configured nodes can
never be primary in the same epoch whatever the detectors get wrong. A primary whose own loop
stalled longer than the detection window may have been taken over meanwhile: it fences itself
(takes no input) for one more window, long enough to read every beat the peer sent while it
stood still; a newer primary among them makes it step down, otherwise it serves on. (A beat
from the peer as shadow does not lift the fence: it may be one queued from before a takeover.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: After an aborted takeover (the "dead" primary still held the address), a silence must
#: outlast this (seconds) to count again.
ABORT_HOLD_S = 1.0


class Role(enum.Enum):
    STARTING = "starting"
    SHADOW = "shadow"
    TAKING_OVER = "taking-over"
    PRIMARY = "primary"
    FENCED = "fenced"


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    configured_primary: bool


@dataclass(frozen=True, slots=True)
class ListenElapsed:
    pass


@dataclass(frozen=True, slots=True)
class PeerBeat:
    """The peer's heartbeat: its node id, role (a `Role` value) and epoch."""

    node_id: str
    role: str
    epoch: int


@dataclass(frozen=True, slots=True)
class PeerSilent:
    pass


@dataclass(frozen=True, slots=True)
class ArbiterBeat:
    pass


@dataclass(frozen=True, slots=True)
class ArbiterSilent:
    pass


@dataclass(frozen=True, slots=True)
class TakeoverDone:
    pass


@dataclass(frozen=True, slots=True)
class TakeoverFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class HoldElapsed:
    pass


@dataclass(frozen=True, slots=True)
class Stalled:
    """This node's own beats were silent for `seconds` (its loop stood still past the beat
    process's stall limit): the peer may have taken over meanwhile."""

    seconds: float


@dataclass(frozen=True, slots=True)
class TakeoverOrdered:
    """Take over now, whatever the heartbeats say: the primary handed off (a planned
    switchover), or the operator's detector (keepalived, MASTER) says so. `reason` is logged."""

    reason: str


@dataclass(frozen=True, slots=True)
class StandbyOrdered:
    """Stop serving and follow: the operator's detector (keepalived, BACKUP or FAULT) says so."""

    reason: str


Input = (
    Started | ListenElapsed | PeerBeat | PeerSilent | ArbiterBeat | ArbiterSilent | TakeoverDone | TakeoverFailed
    | HoldElapsed | Stalled | TakeoverOrdered | StandbyOrdered
)  # fmt: skip

# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listen:
    """Listen `seconds` for a primary already serving, then feed `ListenElapsed`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class ServePrimary:
    """Serve with a fresh core in `epoch`."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Follow:
    """Become the shadow: follow the primary's log (mode active), or just watch."""


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Claim the service address and serve from the replica's state in `epoch`; then feed
    `TakeoverDone` or `TakeoverFailed`."""

    epoch: int


@dataclass(frozen=True, slots=True)
class StopWaitingForShadow:
    """The shadow is silent: stop holding outputs for its acknowledgement until it has caught
    up again (dead, it is dropped when its link closes or its time to catch up runs out)."""


@dataclass(frozen=True, slots=True)
class StepDown:
    """Another node serves in a newer epoch: stop serving and give up the service address."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Fence:
    """Take no input until `Unfence` or `StepDown` (incoming datagrams wait)."""


@dataclass(frozen=True, slots=True)
class Unfence:
    """Process what waited, and serve on."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Feed `HoldElapsed` after `seconds`."""

    seconds: float


Action = Listen | ServePrimary | Follow | TakeOver | StopWaitingForShadow | StepDown | Fence | Unfence | Hold


class RoleMachine:
    """One node's role, epoch and what it knows of its peer; `step` is the whole table.

    `mode` is the HA mode ("none" never takes over). `window_s` is the detection window in
    seconds (silence that means death); `listen_s` how long a starting primary listens for
    one already serving. Never raises; unknown (role, input) pairs are no-ops.
    """

    def __init__(self, *, node_id: str, configured_primary: bool, mode: str, window_s: float,
                 listen_s: float | None = None, has_arbiter: bool = False, detects: bool = True) -> None:  # fmt: skip
        self.node_id = node_id
        self.rank = 0 if configured_primary else 1
        self.mode = mode
        self.window_s = window_s
        self.listen_s = window_s if listen_s is None else listen_s
        self.role = Role.STARTING
        self.epoch = 0
        self.peer_alive = False
        self.arbiter_alive = False
        self.has_arbiter = has_arbiter
        #: False: another detector (keepalived) orders takeovers; silence alone never does.
        self.detects = detects
        self.holding = False
        self.primary_heard = False
        self.counters = {"held_by_arbiter": 0, "step_downs": 0, "fences": 0, "aborted_takeovers": 0}

    def step(self, event: Input) -> list[Action]:
        """Take one input; return what the shell must do, in order."""
        if isinstance(event, PeerBeat):
            return self._peer_beat(event)
        handler = _TABLE.get((self.role, type(event)))
        if handler is None:
            self._note(event)
            return []
        return handler(self, event)

    # -- what every role learns -----------------------------------------------------------

    def _note(self, event: Input) -> None:
        if isinstance(event, PeerSilent):
            self.peer_alive = False
        elif isinstance(event, ArbiterBeat):
            self.arbiter_alive = True
        elif isinstance(event, ArbiterSilent):
            self.arbiter_alive = False
        elif isinstance(event, HoldElapsed):
            self.holding = False

    def _peer_beat(self, beat: PeerBeat) -> list[Action]:
        self.peer_alive = True
        claims_primary = beat.role == Role.PRIMARY.value
        if self.role in (Role.PRIMARY, Role.FENCED) and claims_primary and self._newer(beat):
            self.epoch = beat.epoch
            self.role = Role.SHADOW
            self.counters["step_downs"] += 1
            return [StepDown(beat.epoch), Follow()]
        if self.role in (Role.STARTING, Role.SHADOW):  # a serving node's epoch never moves
            self.epoch = max(self.epoch, beat.epoch)
        if self.role is Role.STARTING and claims_primary:
            self.primary_heard = True
        if self.role is Role.SHADOW and beat.role == Role.SHADOW.value and self.node_id < beat.node_id:
            return self._shadow_input(beat)  # two shadows serve no one: the lower node id takes over
        return []

    def _newer(self, beat: PeerBeat) -> bool:
        return beat.epoch > self.epoch or (beat.epoch == self.epoch and beat.node_id < self.node_id)

    # -- transitions ----------------------------------------------------------------------

    def _started(self, event: Started) -> list[Action]:
        if event.configured_primary:
            return [Listen(self.listen_s)]
        self.role = Role.SHADOW
        return [Follow()]

    def _listen_elapsed(self, event: ListenElapsed) -> list[Action]:
        if self.primary_heard:
            self.role = Role.SHADOW
            return [Follow()]
        self.role = Role.PRIMARY
        if self.epoch % 2 != self.rank:  # the lowest epoch of this node's own that none exceeds
            self.epoch += 1
        return [ServePrimary(self.epoch)]

    def _shadow_input(self, event: Input) -> list[Action]:
        self._note(event)
        if self.mode == "none" or self.holding or not self.detects:
            return []
        if not isinstance(event, PeerBeat):  # the peer fell silent: is it gone?
            if self.peer_alive:
                return []
            if self.has_arbiter and self.arbiter_alive:
                if isinstance(event, PeerSilent):
                    self.counters["held_by_arbiter"] += 1
                return []
        self.epoch = self._claim()
        self.role = Role.TAKING_OVER
        return [TakeOver(self.epoch)]

    def _takeover_ordered(self, event: TakeoverOrdered) -> list[Action]:
        if self.mode == "none":
            return []
        self.holding = False
        self.epoch = self._claim()
        self.role = Role.TAKING_OVER
        return [TakeOver(self.epoch)]

    def _standby_ordered(self, event: StandbyOrdered) -> list[Action]:
        self.role = Role.SHADOW
        self.counters["step_downs"] += 1
        return [StepDown(self.epoch), Follow()]

    def _takeover_done(self, event: TakeoverDone) -> list[Action]:
        self.role = Role.PRIMARY
        return []

    def _takeover_failed(self, event: TakeoverFailed) -> list[Action]:
        self.role = Role.SHADOW
        self.holding = True
        self.counters["aborted_takeovers"] += 1
        return [Follow(), Hold(ABORT_HOLD_S)]

    def _primary_peer_silent(self, event: PeerSilent) -> list[Action]:
        self.peer_alive = False
        return [StopWaitingForShadow()]

    def _stalled(self, event: Stalled) -> list[Action]:
        if event.seconds <= self.window_s:
            return []
        self.role = Role.FENCED
        self.counters["fences"] += 1
        return [Fence(), Hold(self.window_s)]

    def _fence_over(self, event: Input) -> list[Action]:
        self._note(event)
        self.role = Role.PRIMARY
        actions: list[Action] = [Unfence()]
        return [*actions, StopWaitingForShadow()] if isinstance(event, PeerSilent) else actions

    def _claim(self) -> int:
        """The next epoch this node may own: above all seen, of its rank's parity."""
        epoch = self.epoch + 1
        return epoch if epoch % 2 == self.rank else epoch + 1


_TABLE: dict[tuple[Role, type], Callable[[RoleMachine, Any], list[Action]]] = {
    (Role.STARTING, Started): RoleMachine._started,
    (Role.STARTING, ListenElapsed): RoleMachine._listen_elapsed,
    (Role.SHADOW, PeerSilent): RoleMachine._shadow_input,
    (Role.SHADOW, ArbiterSilent): RoleMachine._shadow_input,
    (Role.SHADOW, HoldElapsed): RoleMachine._shadow_input,
    (Role.SHADOW, TakeoverOrdered): RoleMachine._takeover_ordered,
    (Role.PRIMARY, StandbyOrdered): RoleMachine._standby_ordered,
    (Role.FENCED, StandbyOrdered): RoleMachine._standby_ordered,
    (Role.TAKING_OVER, TakeoverDone): RoleMachine._takeover_done,
    (Role.TAKING_OVER, TakeoverFailed): RoleMachine._takeover_failed,
    (Role.PRIMARY, PeerSilent): RoleMachine._primary_peer_silent,
    (Role.PRIMARY, Stalled): RoleMachine._stalled,
    (Role.FENCED, PeerSilent): RoleMachine._fence_over,
    (Role.FENCED, HoldElapsed): RoleMachine._fence_over,
}
