"""Drain, undrain and reload in the core: events with a place in the log, replayed alike by a shadow."""

from __future__ import annotations

import pytest

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.core.events import Reconfigure, SetDraining
from sipshadow.determinism import SystemEntropy
from sipshadow.replication.log import CONTROL, decode_control, encode_control, entry_for, event_for
from sipshadow.replication.replica import Replica
from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.replication_pair import recorded_entries

THIRD = ("192.0.2.23", 5080)
CONFIG = GatewayConfig(service=ALG, members=tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0)


def invite(gateway: Gateway, call_id: str, now: float = 1.0) -> tuple[bytes, tuple[str, int]] | None:
    """Place one INVITE; the forwarded bytes and where they went (None: answered by the ALG)."""
    out = gateway.handle(MessageReceived(request("INVITE", call_id=call_id, branch=f"z9hG4bK{call_id}"), CALLER, now))
    assert len(out) == 1
    return (out[0].data, out[0].destination) if out[0].destination != CALLER else None


def answer(gateway: Gateway, forwarded: bytes, member: tuple[str, int], now: float = 1.1) -> None:
    assert gateway.handle(MessageReceived(response_to(forwarded, 200, "OK"), member, now))


def test_a_drained_member_gets_no_new_call_and_keeps_its_calls() -> None:
    gateway = Gateway(CONFIG, SystemEntropy(1))
    first = invite(gateway, "a")
    assert first is not None and first[1] == MEMBERS[0]
    answer(gateway, *first)
    assert gateway.handle(SetDraining(MEMBERS[0], True, 2.0)) == []
    destinations = {invite(gateway, f"n{i}", 2.1)[1] for i in range(6)}  # type: ignore[index]
    assert destinations == {MEMBERS[1]}
    bye = request("BYE", call_id="a", cseq=2, to_tag="callee-tag", branch="z9hG4bKbye")
    out = gateway.handle(MessageReceived(bye, CALLER, 2.2))
    assert [o.destination for o in out] == [MEMBERS[0]]  # its call still reaches it
    gateway.handle(SetDraining(MEMBERS[0], False, 3.0))
    destinations = {invite(gateway, f"u{i}", 3.1)[1] for i in range(4)}  # type: ignore[index]
    assert destinations == set(MEMBERS)
    assert gateway.counters.drain_changes == 2


def test_every_member_drained_gets_503_with_retry_after() -> None:
    gateway = Gateway(CONFIG, SystemEntropy(1))
    for member in MEMBERS:
        gateway.handle(SetDraining(member, True, 1.0))
    out = gateway.handle(MessageReceived(request("INVITE", call_id="x"), CALLER, 1.5))
    reply = parse_message(out[0].data)
    assert reply.status == 503 and reply.first_value("retry-after") == "5"
    assert gateway.counters.rejected == {503: 1} and len(gateway.table) == 0


def test_draining_an_address_that_is_no_member_changes_nothing() -> None:
    gateway = Gateway(CONFIG, SystemEntropy(1))
    before = gateway.state_digest()
    gateway.handle(SetDraining(THIRD, True, 1.0))
    assert gateway.state_digest() == before and gateway.counters.drain_changes == 0


def test_a_reload_appends_new_members_and_retires_the_absent_ones() -> None:
    gateway = Gateway(CONFIG, SystemEntropy(1))
    held = invite(gateway, "held")
    assert held is not None and held[1] == MEMBERS[0]
    answer(gateway, *held)
    members = (MemberSpec(MEMBERS[1], weight=3), MemberSpec(THIRD))
    gateway.handle(Reconfigure(members, "round-robin", 0.0, 3, 2.0))
    assert gateway.members == [MEMBERS[0], MEMBERS[1], THIRD]  # indexes kept, the new one appended
    assert gateway.membership.retired == [True, False, False]
    assert gateway.config.members[1].weight == 3 and gateway.counters.reconfigurations == 1
    destinations = [invite(gateway, f"r{i}", 2.1)[1] for i in range(4)]  # type: ignore[index]
    assert set(destinations) == {MEMBERS[1], THIRD}
    assert gateway.table.active_per_member[0] == 1  # the retired member's call is still up
    bye = request("BYE", call_id="held", cseq=2, to_tag="callee-tag", branch="z9hG4bKbye")
    assert [o.destination for o in gateway.handle(MessageReceived(bye, CALLER, 2.2))] == [MEMBERS[0]]
    gateway.handle(Reconfigure(tuple(MemberSpec(m) for m in MEMBERS), "least-active-calls", 0.0, 3, 3.0))
    assert gateway.membership.retired == [False, False, True] and gateway.config.policy == "least-active-calls"


def test_retired_members_are_not_probed() -> None:
    config = GatewayConfig(service=ALG, members=tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=1.0)
    gateway = Gateway(config, SystemEntropy(1))
    assert {p.destination for p in gateway.handle(TimerExpired(0.0))} == set(MEMBERS)
    gateway.handle(Reconfigure((MemberSpec(MEMBERS[1]), MemberSpec(THIRD)), "round-robin", 1.0, 3, 0.5))
    assert {p.destination for p in gateway.handle(TimerExpired(1.0))} == {MEMBERS[1], THIRD}


def test_switching_probes_on_at_a_reload_makes_a_round_due_at_once() -> None:
    gateway = Gateway(CONFIG, SystemEntropy(1))
    assert gateway.next_deadline() is None
    gateway.handle(Reconfigure(CONFIG.members, "round-robin", 2.0, 3, 5.0))
    assert gateway.next_deadline() == 5.0
    gateway.handle(Reconfigure(CONFIG.members, "round-robin", 0.0, 3, 6.0))
    assert gateway.next_deadline() is None


def test_membership_is_in_the_state_digest() -> None:
    drained, plain = Gateway(CONFIG, SystemEntropy(1)), Gateway(CONFIG, SystemEntropy(1))
    drained.handle(SetDraining(MEMBERS[1], True, 1.0))
    assert drained.state_digest() != plain.state_digest()
    drained.handle(SetDraining(MEMBERS[1], False, 1.0))
    assert drained.state_digest() == plain.state_digest()


@pytest.mark.parametrize(
    "event",
    [SetDraining(MEMBERS[0], True, 4.5),
     Reconfigure((MemberSpec(THIRD, 2, "tcp"), MemberSpec(MEMBERS[0])), "weighted-random", 0.5, 2, 4.5)],
)  # fmt: skip
def test_control_events_round_trip_through_the_log(event: Reconfigure | SetDraining) -> None:
    entry = entry_for(9, event, (), 123, with_payload=False)  # tap mode: a control entry still carries it
    assert entry.kind == CONTROL and entry.payload is not None
    assert event_for(entry) == event
    assert decode_control(encode_control(event), event.now) == event


def test_bad_control_payloads_are_value_errors() -> None:
    for payload in (b"", b"\x91\xa4nope", encode_control(SetDraining(MEMBERS[0], True, 1.0))[:-1]):
        with pytest.raises(ValueError):
            decode_control(payload, 1.0)


def test_a_replica_applies_reload_and_drain_at_the_same_point_and_agrees() -> None:
    """The log's order: calls before, a reload, a drain, calls after: the replica's digest
    matches the primary's after every entry (Replica.apply raises Divergence otherwise)."""
    events = [
        MessageReceived(request("INVITE", call_id="c1", branch="z9hG4bKc1"), CALLER, 1.0),
        Reconfigure((MemberSpec(MEMBERS[0]), MemberSpec(MEMBERS[1]), MemberSpec(THIRD)), "round-robin", 0.0, 3, 2.0),
        SetDraining(MEMBERS[0], True, 2.5),
        *(MessageReceived(request("INVITE", call_id=f"d{i}", branch=f"z9hG4bKd{i}"), CALLER, 3.0) for i in range(5)),
    ]
    primary, entries = recorded_entries(CONFIG, events)
    replica = Replica(CONFIG)
    sent = [out.destination for entry in entries for out in replica.apply(entry)]
    assert replica.gateway.state_digest() == primary.state_digest()
    assert MEMBERS[0] not in sent[1:] and THIRD in sent


def test_a_snapshot_carries_the_membership_to_a_shadow_built_from_the_old_config() -> None:
    primary = Gateway(CONFIG, SystemEntropy(1))
    held = invite(primary, "held")
    assert held is not None
    answer(primary, *held)
    primary.handle(Reconfigure((MemberSpec(MEMBERS[1]), MemberSpec(THIRD, 5)), "weighted-random", 0.0, 2, 2.0))
    primary.handle(SetDraining(THIRD, True, 2.1))
    shadow = Gateway(CONFIG, SystemEntropy(2))
    shadow.import_state(primary.export_state())
    assert shadow.state_digest() == primary.state_digest()
    assert shadow.members == primary.members and shadow.config.policy == "weighted-random"
    assert shadow.membership.draining == [False, False, True] and shadow.table.active_per_member == [1, 0, 0]
