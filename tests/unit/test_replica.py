"""The shadow's replay fails loudly: wrong order, missing or extra draws, different state."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.determinism import ReplayingEntropy, ReplayMismatch
from sipshadow.replication.log import entry_for, event_for, payload_digest
from sipshadow.replication.replica import Divergence, Replica
from tests.unit.messages import ALG, CALLER, MEMBERS, request
from tests.unit.replication_pair import recorded_entries

CONFIG = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), "weighted-random", probe_interval_s=0)


def recorded(events: list) -> tuple[Gateway, list]:
    return recorded_entries(CONFIG, events)


INVITES = [
    MessageReceived(request("INVITE", call_id=f"c{i}", branch=f"z9hG4bK{i}"), CALLER, float(i)) for i in range(4)
]


def test_replay_reaches_the_primary_state_and_keeps_unreleased_outputs() -> None:
    primary, entries = recorded(INVITES)
    replica = Replica(CONFIG)
    for entry in entries:
        replica.apply(entry)
    assert replica.gateway.state_digest() == primary.state_digest()
    replica.released(2)
    assert len(replica.unreleased_outputs()) == 2


def test_an_entry_out_of_order_is_refused() -> None:
    _, entries = recorded(INVITES)
    with pytest.raises(Divergence, match="expected entry 1"):
        Replica(CONFIG).apply(entries[1])


def test_missing_draws_are_a_divergence() -> None:
    _, entries = recorded(INVITES)
    with pytest.raises(Divergence, match="did not make"):
        Replica(CONFIG).apply(replace(entries[0], draws=()))


def test_unused_draws_are_a_divergence() -> None:
    _, entries = recorded([TimerExpired(1.0)])
    with pytest.raises(Divergence, match="never used"):
        Replica(CONFIG).apply(replace(entries[0], draws=(0.5,)))


def test_a_different_draw_shows_in_the_state_digest() -> None:
    _, entries = recorded(INVITES[:1])
    first = entries[0]
    flipped = replace(first, draws=(0.99 if first.draws[0] < 0.5 else 0.01,))
    with pytest.raises(Divergence, match="state digest"):
        Replica(CONFIG).apply(flipped)


def test_tap_mode_entry_replays_with_the_payload_from_the_wire() -> None:
    event = INVITES[0]
    entry = entry_for(1, event, (0.3,), 0, with_payload=False)
    assert entry.payload is None and entry.payload_digest == payload_digest(event.data)
    assert event_for(entry, event.data) == event
    with pytest.raises(ValueError, match="no payload"):
        event_for(entry)


def test_replaying_entropy_refuses_draws_beyond_the_log() -> None:
    entropy = ReplayingEntropy()
    entropy.load((0.25,))
    assert entropy.random() == 0.25
    with pytest.raises(ReplayMismatch):
        entropy.random()


def test_takeover_resend_drops_a_provisional_whose_final_response_is_also_resent() -> None:
    """A 180 re-sent after the 200 the caller already holds aborts strict UACs (SIPp)."""
    from sipshadow.core import SendMessage
    from sipshadow.core.resend import without_stale_provisionals
    from tests.unit.messages import CALLER, request, response_to

    invite, other = request("INVITE"), request("INVITE", call_id="other", branch="z9hG4bKother")
    ringing, ok = (SendMessage(response_to(invite, status, "X"), CALLER) for status in (180, 200))
    other_ringing = SendMessage(response_to(other, 180, "Ringing"), CALLER)
    forwarded = SendMessage(invite, ("192.0.2.21", 5080))
    kept = without_stale_provisionals([ringing, other_ringing, forwarded, ok])
    assert kept == [other_ringing, forwarded, ok]
    assert without_stale_provisionals([ok, ringing]) == [ok, ringing]  # a final before it: kept as it came


def test_takeover_resend_skips_a_request_whose_response_proves_it_was_delivered() -> None:
    """SIPp's UAS aborts a call on an INVITE it already answered; the member's 180 through
    the old primary proves that INVITE went out, so the new primary does not send it again."""
    from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived
    from sipshadow.core.resend import resend_plan
    from sipshadow.determinism import SystemEntropy
    from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to

    gateway = Gateway(GatewayConfig(ALG, (MemberSpec(MEMBERS[0]),), probe_interval_s=0.0), SystemEntropy(1))
    (answered,) = gateway.handle(MessageReceived(request("INVITE", call_id="a", branch="z9hG4bKa"), CALLER, 0.0))
    (silent,) = gateway.handle(MessageReceived(request("INVITE", call_id="b", branch="z9hG4bKb"), CALLER, 0.0))
    ringing = response_to(answered.data, 180, "Ringing")
    (relayed,) = gateway.handle(MessageReceived(ringing, MEMBERS[0], 0.1))
    assert resend_plan([answered, silent, relayed], [ringing]) == [silent, relayed]
    assert resend_plan([answered, silent], []) == [answered, silent]
