"""The HA role table: every (role, input) pair is safe, and no schedule of beats, silences,
stalls and takeovers gives two primaries in one epoch or lets a stalled primary serve beside
the shadow that took over from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.ha import roles
from sipshadow.ha.roles import Role, RoleMachine

WINDOW_S = 0.04

INPUTS = st.one_of(
    st.builds(roles.Started, st.booleans()),
    st.just(roles.ListenElapsed()),
    st.builds(
        roles.PeerBeat,
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([r.value for r in Role]),
        st.integers(0, 2**64 - 1),
    ),
    st.just(roles.PeerSilent()),
    st.just(roles.ArbiterBeat()),
    st.just(roles.ArbiterSilent()),
    st.just(roles.TakeoverDone()),
    st.builds(roles.TakeoverFailed, st.text(max_size=5)),
    st.just(roles.HoldElapsed()),
    st.builds(roles.Stalled, st.floats(0, 10)),
)
ACTIONS = (roles.Listen, roles.ServePrimary, roles.Follow, roles.TakeOver, roles.StopWaitingForShadow, roles.StepDown,
           roles.Fence, roles.Unfence, roles.Hold)  # fmt: skip


def machine(name: str, primary: bool, *, mode: str = "active", arbiter: bool = False) -> RoleMachine:
    return RoleMachine(node_id=name, configured_primary=primary, mode=mode, window_s=WINDOW_S, has_arbiter=arbiter)


@settings(max_examples=300, deadline=None)
@given(role=st.sampled_from(Role), epoch=st.integers(0, 100), mode=st.sampled_from(["none", "network", "active"]),
       event=INPUTS)  # fmt: skip
def test_every_role_takes_every_input_without_raising(role: Role, epoch: int, mode: str, event: roles.Input) -> None:
    node = machine("a", epoch % 2 == 0, mode=mode, arbiter=True)
    node.role, node.epoch = role, epoch
    actions = node.step(event)
    assert all(isinstance(action, ACTIONS) for action in actions)
    assert isinstance(node.role, Role)
    assert node.epoch >= epoch or node.role is Role.SHADOW
    if mode == "none":
        assert not any(isinstance(action, roles.TakeOver) for action in actions)


def test_the_table_in_words() -> None:
    primary, shadow = machine("a", True), machine("b", False)
    assert primary.step(roles.Started(True)) == [roles.Listen(WINDOW_S)]
    assert shadow.step(roles.Started(False)) == [roles.Follow()] and shadow.role is Role.SHADOW
    assert primary.step(roles.ListenElapsed()) == [roles.ServePrimary(0)]
    shadow.step(roles.PeerBeat("a", "primary", 0))
    assert shadow.step(roles.PeerSilent()) == [roles.TakeOver(1)] and shadow.role is Role.TAKING_OVER
    assert shadow.step(roles.TakeoverDone()) == [] and shadow.role is Role.PRIMARY
    # The old primary comes back: it hears the newer primary and steps down.
    assert primary.step(roles.PeerBeat("b", "primary", 1)) == [roles.StepDown(1), roles.Follow()]
    assert primary.role is Role.SHADOW and primary.epoch == 1
    # Its next takeover claims an epoch of its own parity, above what it saw.
    primary.step(roles.PeerSilent())
    assert primary.epoch == 2 and primary.role is Role.TAKING_OVER


def test_a_starting_primary_that_hears_one_serving_joins_as_the_shadow() -> None:
    node = machine("a", True)
    node.step(roles.Started(True))
    node.step(roles.PeerBeat("b", "primary", 3))
    assert node.step(roles.ListenElapsed()) == [roles.Follow()] and node.epoch == 3


def test_the_arbiter_and_an_aborted_takeover_hold_the_shadow_back() -> None:
    node = machine("b", False, arbiter=True)
    node.step(roles.Started(False))
    node.step(roles.ArbiterBeat())
    node.step(roles.PeerBeat("a", "primary", 0))
    assert node.step(roles.PeerSilent()) == [] and node.counters["held_by_arbiter"] == 1
    assert node.step(roles.ArbiterSilent()) == [roles.TakeOver(1)]
    assert node.step(roles.TakeoverFailed("address in use")) == [roles.Follow(), roles.Hold(roles.ABORT_HOLD_S)]
    node.step(roles.ArbiterSilent())
    assert node.role is Role.SHADOW  # holding: the silence must outlast the hold
    assert node.step(roles.HoldElapsed()) == [roles.TakeOver(3)]


def test_two_shadows_that_both_take_over_never_claim_the_same_epoch() -> None:
    """A partition's worst case: both nodes are shadows that know the same epoch (the old
    primary stepped down, the other node restarted), then each declares the other dead.
    Epoch parity keeps them apart."""
    a, b = machine("a", True), machine("b", False)
    for node, event in ((a, roles.Started(True)), (a, roles.ListenElapsed()),
                        (a, roles.PeerBeat("b", "primary", 1))):  # fmt: skip
        node.step(event)
    assert a.role is Role.SHADOW and a.epoch == 1
    b.step(roles.Started(False))  # b restarted
    b.step(roles.PeerBeat("a", "shadow", 1))
    a.step(roles.PeerBeat("b", "shadow", 1))
    a.step(roles.TakeoverFailed("in use"))  # (a, the lower id, tried first and failed)
    b.step(roles.PeerBeat("a", "shadow", 2))
    assert a.role is b.role is Role.SHADOW and a.epoch == b.epoch == 2
    a.holding = False
    assert a.step(roles.PeerSilent()) == [roles.TakeOver(4)]
    assert b.step(roles.PeerSilent()) == [roles.TakeOver(3)]


def test_mode_none_never_takes_over() -> None:
    node = machine("b", False, mode="none")
    node.step(roles.Started(False))
    assert node.step(roles.PeerSilent()) == [] and node.step(roles.HoldElapsed()) == []


def test_a_stall_fences_the_primary_for_one_window() -> None:
    node = machine("a", True)
    node.step(roles.Started(True))
    node.step(roles.ListenElapsed())
    assert node.step(roles.Stalled(WINDOW_S / 2)) == []
    assert node.step(roles.Stalled(1.0)) == [roles.Fence(), roles.Hold(WINDOW_S)] and node.role is Role.FENCED
    assert node.step(roles.PeerBeat("b", "shadow", 0)) == []  # maybe queued from before a takeover
    assert node.step(roles.HoldElapsed()) == [roles.Unfence()] and node.role is Role.PRIMARY


# -- two nodes, any schedule ----------------------------------------------------------------


@dataclass
class Cluster:
    """Two nodes and the beats in flight between them (FIFO per direction, may be lost)."""

    nodes: dict[str, RoleMachine] = field(
        default_factory=lambda: {"a": machine("a", True, arbiter=True), "b": machine("b", False, arbiter=True)}
    )
    in_flight: dict[str, list[roles.PeerBeat]] = field(default_factory=lambda: {"a": [], "b": []})
    epochs_served: dict[int, set[str]] = field(default_factory=dict)
    #: What the shells would be doing, from the actions alone: serving the address or not.
    serving: dict[str, bool] = field(default_factory=lambda: {"a": False, "b": False})

    def step(self, name: str, event: roles.Input) -> list[roles.Action]:
        node = self.nodes[name]
        before = node.epoch
        actions = node.step(event)
        assert node.epoch >= before or node.role is Role.SHADOW, "a serving node's epoch never goes back"
        for action in actions:
            if isinstance(action, (roles.ServePrimary, roles.TakeOver, roles.Unfence)):
                self.serving[name] = True
            elif isinstance(action, (roles.StepDown, roles.Fence)):
                self.serving[name] = False
        if isinstance(event, roles.TakeoverFailed) and node.role is Role.SHADOW:
            self.serving[name] = False
        assert self.serving[name] == (node.role in (Role.PRIMARY, Role.TAKING_OVER)), (node.role, actions)
        for other, peer in self.nodes.items():
            if self.serving[other]:
                self.epochs_served.setdefault(peer.epoch, set()).add(other)
        return actions

    def beat(self, sender: str) -> None:
        node = self.nodes[sender]
        receiver = "b" if sender == "a" else "a"
        self.in_flight[receiver].append(roles.PeerBeat(sender, node.role.value, node.epoch))

    def deliver(self, receiver: str) -> None:
        if self.in_flight[receiver]:
            self.step(receiver, self.in_flight[receiver].pop(0))

    def primaries(self) -> list[str]:
        return [name for name, serving in self.serving.items() if serving]


NAMES = st.sampled_from(["a", "b"])
SCHEDULE = st.lists(
    st.one_of(
        st.tuples(st.just("beat"), NAMES),
        st.tuples(st.just("deliver"), NAMES),
        st.tuples(st.just("lose"), NAMES),
        st.tuples(
            st.just("input"),
            NAMES,
            st.sampled_from(
                [
                    roles.PeerSilent(),
                    roles.ArbiterBeat(),
                    roles.ArbiterSilent(),
                    roles.TakeoverDone(),
                    roles.TakeoverFailed("in use"),
                    roles.HoldElapsed(),
                    roles.ListenElapsed(),
                    roles.Stalled(1.0),
                ]
            ),
        ),
    ),
    max_size=80,
)


@settings(max_examples=600, deadline=None)
@given(schedule=SCHEDULE)
def test_no_schedule_gives_two_primaries_in_one_epoch(schedule: list[tuple]) -> None:
    """Detectors may be wrong (any silence, any time), beats may be late or lost: two nodes
    may both serve for a while under a partition, but never in the same epoch."""
    cluster = Cluster()
    cluster.step("a", roles.Started(True))
    cluster.step("b", roles.Started(False))
    for operation in schedule:
        kind, name = operation[0], operation[1]
        if kind == "beat":
            cluster.beat(name)
        elif kind == "deliver":
            cluster.deliver(name)
        elif kind == "lose" and cluster.in_flight[name]:
            cluster.in_flight[name].pop(0)
        elif kind == "input":
            cluster.step(name, operation[2])
        assert all(len(servers) == 1 for servers in cluster.epochs_served.values()), cluster.epochs_served


@settings(max_examples=300, deadline=None)
@given(
    beats_during_stall=st.integers(0, 5),
    takeover_after=st.integers(0, 5),
    resume=st.lists(st.sampled_from(["deliver", "beat_b", "silent_a"]), max_size=20),
)
def test_a_stalled_primary_never_serves_beside_the_shadow_that_took_over(
    beats_during_stall: int, takeover_after: int, resume: list[str]
) -> None:
    """The primary freezes (SIGSTOP); the shadow beats on, takes over, beats as primary. When
    the old primary's loop turns again it reads every beat queued meanwhile (stale ones first),
    and its fence holds until its hold elapses, which happens only after the queued beats are
    read (the beats sit in its socket already). From then on the two never both serve."""
    cluster = Cluster()
    cluster.step("a", roles.Started(True))
    cluster.step("a", roles.ListenElapsed())
    cluster.step("b", roles.Started(False))
    cluster.beat("a")
    cluster.deliver("b")
    for index in range(beats_during_stall + takeover_after + 1):  # a is frozen: b alone moves
        if index == takeover_after:
            assert cluster.step("b", roles.PeerSilent()) == [roles.TakeOver(1)]
            cluster.step("b", roles.TakeoverDone())
        cluster.beat("b")
    cluster.step("a", roles.Stalled(1.0))  # a's loop turns again
    assert cluster.primaries() == ["b"]
    hold_due = True
    for operation in resume:
        if operation == "deliver":
            cluster.deliver("a")
        elif operation == "beat_b":
            cluster.beat("b")
        elif operation == "silent_a" and cluster.nodes["b"].role is not Role.PRIMARY:
            cluster.step("a", roles.PeerSilent())
        if hold_due and not cluster.in_flight["a"]:
            hold_due = False
            cluster.step("a", roles.HoldElapsed())
        assert len(cluster.primaries()) <= 1, [node.role for node in cluster.nodes.values()]
    assert cluster.nodes["a"].role in (Role.SHADOW, Role.FENCED)


def test_two_shadows_that_hear_each_other_elect_the_lower_node_id() -> None:
    """Both nodes shadow (one stepped down while the other's takeover aborted): nobody serves,
    so the lower node id takes over; the other keeps following."""
    a, b = machine("a", True), machine("b", False)
    a.step(roles.Started(False))
    b.step(roles.Started(False))
    assert b.step(roles.PeerBeat("a", "shadow", 1)) == []
    assert a.step(roles.PeerBeat("b", "shadow", 1)) == [roles.TakeOver(2)]


def test_a_peer_that_is_only_taking_over_does_not_make_the_primary_step_down() -> None:
    """Its takeover may abort (the address is still ours): only a serving primary counts."""
    node = machine("a", True)
    node.step(roles.Started(True))
    node.step(roles.ListenElapsed())
    assert node.step(roles.PeerBeat("b", "taking-over", 1)) == [] and node.role is Role.PRIMARY


def test_an_ordered_takeover_needs_no_silence_and_a_standby_order_steps_down() -> None:
    shadow = RoleMachine(node_id="b", configured_primary=False, mode="active", window_s=0.04)
    shadow.step(roles.Started(configured_primary=False))
    shadow.step(roles.PeerBeat("a", "primary", 2))
    actions = shadow.step(roles.TakeoverOrdered("handoff"))
    assert actions == [roles.TakeOver(3)] and shadow.role is Role.TAKING_OVER
    shadow.step(roles.TakeoverDone())
    assert shadow.step(roles.StandbyOrdered("keepalived BACKUP")) == [roles.StepDown(3), roles.Follow()]
    assert shadow.role is Role.SHADOW and shadow.step(roles.StandbyOrdered("again")) == []


def test_with_an_external_detector_silence_never_takes_over() -> None:
    shadow = RoleMachine(node_id="b", configured_primary=False, mode="active", window_s=0.04, detects=False)
    shadow.step(roles.Started(configured_primary=False))
    shadow.step(roles.PeerBeat("a", "primary", 2))
    assert shadow.step(roles.PeerSilent()) == [] and shadow.role is Role.SHADOW
    assert shadow.step(roles.PeerBeat("a", "shadow", 2)) == []  # two shadows: keepalived decides
    assert shadow.step(roles.TakeoverOrdered("keepalived MASTER")) == [roles.TakeOver(3)]


def test_mode_none_ignores_an_ordered_takeover() -> None:
    shadow = RoleMachine(node_id="b", configured_primary=False, mode="none", window_s=0.04)
    shadow.step(roles.Started(configured_primary=False))
    assert shadow.step(roles.TakeoverOrdered("handoff")) == [] and shadow.role is Role.SHADOW
