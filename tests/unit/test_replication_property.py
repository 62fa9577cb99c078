"""Replica equality: a recorded primary core and a replaying shadow core stay equal, always."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.core import GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.core.config import POLICIES
from sipshadow.core.events import SetClock
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.replication_pair import Pair

CONFIG = dict(probe_interval_s=1.0, probe_misses=2, early_timeout_s=5.0, confirmed_timeout_s=20.0,
              terminated_linger_s=2.0)  # fmt: skip

#: To tags of forks: a member that forks answers one request with several.
TAGS = st.sampled_from(["callee-tag", "fork-b", "fork-c"])

operations = st.one_of(
    st.tuples(st.just("invite"), st.integers(0, 5)),
    st.tuples(st.just("subscribe"), st.integers(0, 5)),
    st.tuples(st.just("answer"), st.integers(0, 5), st.sampled_from([100, 180, 200, 202, 486, 487]), TAGS),
    st.tuples(
        st.just("in_dialog"),
        st.integers(0, 5),
        st.sampled_from(["ACK", "BYE", "INFO", "INVITE", "UPDATE", "NOTIFY"]),
        TAGS,
        st.booleans(),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("timer"), st.floats(0.0, 8.0)),
    st.tuples(st.just("probe_answer"), st.integers(0, 1)),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
    st.tuples(st.just("clock"), st.floats(1.7e9, 1.8e9)),
)


class Driver:
    """Turns abstract operations into events, using the primary's outputs to build replies."""

    def __init__(self) -> None:
        self.now = 0.0
        self.forwarded: dict[int, bytes] = {}
        self.probes: dict[int, bytes] = {}
        self.cseq = 1

    def event(self, operation: tuple) -> MessageReceived | TimerExpired | SetClock | None:
        kind = operation[0]
        self.now += 0.01
        self.cseq += 1
        if kind == "timer":
            self.now += operation[1]
            return TimerExpired(self.now)
        if kind == "clock":  # the wall clock's anchor for call records
            return SetClock(operation[1], self.now)
        if kind == "garbage":
            return MessageReceived(operation[1], CALLER, self.now)
        if kind == "probe_answer":
            probe = self.probes.get(operation[1])
            return (
                None
                if probe is None
                else MessageReceived(response_to(probe, 200, "OK"), MEMBERS[operation[1]], self.now)
            )
        call = f"c{operation[1]}"
        if kind == "invite":
            return MessageReceived(request("INVITE", call_id=call, branch=f"z9hG4bK{call}"), CALLER, self.now)
        if kind == "cancel":
            return MessageReceived(request("CANCEL", call_id=call, branch=f"z9hG4bK{call}"), CALLER, self.now)
        if kind == "subscribe":
            data = request("SUBSCRIBE", call_id=call, branch=f"z9hG4bKs{call}", extra=("Event: presence",))
            return MessageReceived(data, CALLER, self.now)
        if kind == "in_dialog":
            method, tag, from_callee = operation[2:]
            tags = {"from_tag": tag, "to_tag": "caller-tag"} if from_callee else {"to_tag": tag}
            extra = ("Subscription-State: terminated",) if method == "NOTIFY" else ()
            data = request(method, call_id=call, cseq=self.cseq, branch=f"z9hG4bK{self.cseq}", extra=extra, **tags)
            return MessageReceived(data, MEMBERS[0] if from_callee else CALLER, self.now)
        forwarded = self.forwarded.get(operation[1])
        if forwarded is None:
            return None
        return MessageReceived(response_to(forwarded, operation[2], "X", to_tag=operation[3]), MEMBERS[0], self.now)

    def observe(self, operation: tuple, outputs: list) -> None:
        for output in outputs:
            if output.data.startswith(b"OPTIONS"):
                self.probes[MEMBERS.index(output.destination)] = output.data
            elif operation[0] in ("invite", "subscribe") and output.destination in MEMBERS:
                self.forwarded[operation[1]] = output.data


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    seed=st.integers(0, 2**32),
    records=st.booleans(),
    ops=st.lists(operations, min_size=1, max_size=60),
    data=st.data(),
)
def test_shadow_replaying_the_log_equals_the_primary_after_every_step(
    policy: str, seed: int, records: bool, ops: list[tuple], data: st.DataObject
) -> None:
    """The real recorder and follower, wired over the real wire format (`Pair`): after every
    event the shadow's core equals the primary's, and output commit lets out every output,
    in order, once the shadow has acknowledged it."""
    # The join point is drawn within the example, so the shadow always joins and is checked.
    join_at = data.draw(st.integers(0, len(ops) - 1), label="join_at")
    config = GatewayConfig(ALG, tuple(MemberSpec(m, w) for m, w in zip(MEMBERS, (1, 2), strict=True)), policy,
                           call_records=records, **CONFIG)  # fmt: skip
    pair = Pair(config, seed=seed)
    driver = Driver()
    produced = []
    for index, operation in enumerate(ops):
        if index == join_at:  # a shadow joins here by state transfer
            pair.connect()
            pair.deliver()
            shadow = pair.follower.replica.gateway
            assert pair.follower.synced and shadow.state_digest() == pair.gateway.state_digest()
            assert shadow.table.active_per_member == pair.gateway.table.active_per_member
        event = driver.event(operation)
        if event is None:
            continue
        pair.now = event.now
        outputs = pair.event(event)
        produced += outputs
        driver.observe(operation, outputs)
        pair.deliver()
        assert pair.sent == produced  # every output released, in order, none twice
        if index >= join_at:
            shadow = pair.follower.replica.gateway
            assert pair.follower.replica.applied_seq == pair.recorder.seq
            assert shadow.state_digest() == pair.gateway.state_digest()
            assert shadow.export_state() == pair.gateway.export_state()
            assert shadow.table.active_per_member == pair.gateway.table.active_per_member
    assert pair.dropped == [] and pair.follower.stats["divergences"] == 0
