"""The dialog table's invariants under any mix of forks, retransmissions, races and timers.

Hypothesis drives one gateway with INVITEs and SUBSCRIBEs on a few Call-IDs and branches,
responses with several To tags in any order, in-dialog requests from either side with right
or wrong tags, CANCELs and timers. After every event the table must still be true to itself:
the active counts are what its calls say, the digest is the hash of what it holds, every
call holds something, and the heap still has a deadline for every call.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.core.dialogs import DialogTable, call_hash
from sipshadow.determinism import SystemEntropy
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to

CALLS = st.integers(0, 2)
BRANCHES = st.integers(0, 1)
TAGS = st.sampled_from(["t1", "t2", "t3"])

operations = st.one_of(
    st.tuples(st.just("open"), CALLS, BRANCHES, st.sampled_from(["INVITE", "SUBSCRIBE", "REFER"])),
    st.tuples(st.just("respond"), CALLS, BRANCHES, st.sampled_from([100, 180, 183, 200, 202, 404, 487]), TAGS),
    st.tuples(
        st.just("request"),
        CALLS,
        st.sampled_from(["ACK", "BYE", "INFO", "INVITE", "NOTIFY", "CANCEL", "UPDATE"]),
        TAGS,
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.just("time"), st.floats(0.0, 40.0)),
)


def check(table: DialogTable) -> None:
    active = [0] * len(table.active_per_member)
    digest = 0
    for call_id, call in table.calls.items():
        assert call.call_id == call_id
        assert call.attempts or call.dialogs, "a call that holds nothing must be gone"
        assert call.active == call.live
        if call.active and call.counted:
            active[call.member] += 1
        digest ^= call_hash(call)
    assert table.active_per_member == active
    assert table.digest == digest
    if table.calls:
        assert table.next_deadline() is not None
        assert table.next_deadline() <= min(call.deadline() for call in table.calls.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(operations, max_size=50))
def test_any_sequence_of_events_leaves_the_table_true_to_itself(ops: list[tuple]) -> None:
    config = GatewayConfig(ALG, tuple(MemberSpec(member) for member in MEMBERS), "least-active-calls",
                           probe_interval_s=0.0, early_timeout_s=20.0, confirmed_timeout_s=30.0,
                           terminated_linger_s=5.0)  # fmt: skip
    gateway = Gateway(config, SystemEntropy(7))
    forwarded: dict[tuple[int, int], bytes] = {}
    now = 0.0
    for step, operation in enumerate(ops):
        now += 0.01
        kind = operation[0]
        if kind == "time":
            now += operation[1]
            gateway.handle(TimerExpired(now))
        elif kind == "open":
            _, call, branch, method = operation
            data = request(method, call_id=f"c{call}", branch=f"z9hG4bKb{call}.{branch}")
            for output in gateway.handle(MessageReceived(data, CALLER, now)):
                if output.destination in MEMBERS:
                    forwarded[(call, branch)] = output.data
        elif kind == "respond":
            _, call, branch, status, tag = operation
            if (call, branch) in forwarded:
                data = response_to(forwarded[(call, branch)], status, "X", to_tag=None if status == 100 else tag)
                gateway.handle(MessageReceived(data, MEMBERS[0], now))
        else:
            _, call, method, tag, from_callee, tagged = operation
            tags = {"from_tag": tag, "to_tag": "caller-tag"} if from_callee else {"to_tag": tag if tagged else None}
            source = MEMBERS[0] if from_callee else CALLER
            branch = "z9hG4bKb0.0" if method == "CANCEL" and not from_callee else f"z9hG4bKr{step}"
            data = request(method, call_id=f"c{call}", cseq=1 if method == "CANCEL" else step + 2, branch=branch,
                           **tags)  # fmt: skip
            gateway.handle(MessageReceived(data, source, now))
        check(gateway.table)
    gateway.handle(TimerExpired(now + 1000.0))
    assert len(gateway.table) == 0 and gateway.table.active_per_member == [0, 0]
