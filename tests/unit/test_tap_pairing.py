"""Tap mode: log entries carry digests; the shadow pairs them with tapped copies, in log order."""

from __future__ import annotations

from sipshadow.core import GatewayConfig, MemberSpec
from sipshadow.replication.log import payload_digest
from sipshadow.replication.tap import TapBuffer
from tests.unit.messages import ALG, CALLER, MEMBERS, request
from tests.unit.replication_pair import Pair

CONFIG = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0)
DATAGRAMS = [request("INVITE", call_id=f"c{i}", branch=f"z9hG4bK{i}") for i in range(3)]


def test_copies_are_claimed_by_digest_and_source_oldest_first() -> None:
    tap = TapBuffer()
    tap.add(b"same", CALLER, 0.0)
    tap.add(b"same", CALLER, 0.1)
    tap.add(b"same", MEMBERS[0], 0.2)
    assert tap.claim(payload_digest(b"same"), MEMBERS[0]) == b"same"
    assert tap.claim(payload_digest(b"same"), CALLER) == b"same"
    assert tap.unclaimed() == [(b"same", CALLER)]
    assert tap.claim(payload_digest(b"other"), CALLER) is None


def test_copies_the_log_never_claims_are_pruned_after_the_horizon() -> None:
    tap = TapBuffer(horizon_s=1.0)
    tap.add(b"lost by the primary", CALLER, 0.0)
    tap.add(b"recent", CALLER, 0.9)
    tap.prune(1.5)
    assert tap.unclaimed() == [(b"recent", CALLER)] and tap.pruned == 1


def synced_tap_pair() -> Pair:
    pair = Pair(CONFIG, tap=True)
    pair.connect()
    pair.deliver()
    assert pair.follower.synced and pair.recorder.attached
    return pair


def test_entries_wait_for_their_tapped_copy_and_apply_in_log_order() -> None:
    pair = synced_tap_pair()
    for data in DATAGRAMS:
        pair.datagram(data, CALLER, tapped=False)
    pair.tap(DATAGRAMS[1], CALLER)  # the tap delivers out of log order
    pair.deliver()
    assert pair.follower.replica.applied_seq == 0 and pair.sent == []  # entry 1's copy is missing
    pair.tap(DATAGRAMS[0], CALLER)
    assert pair.follower.replica.applied_seq == 2  # entry 3 still waits for its copy
    pair.tap(DATAGRAMS[2], CALLER)
    pair.deliver()
    assert pair.follower.replica.applied_seq == 3 and len(pair.sent) == 3
    assert pair.follower.replica.gateway.state_digest() == pair.gateway.state_digest()


def test_a_copy_the_tap_lost_is_asked_of_the_primary() -> None:
    pair = synced_tap_pair()
    pair.datagram(DATAGRAMS[0], CALLER)
    pair.datagram(DATAGRAMS[1], CALLER, tapped=False)  # the tap lost this one
    pair.datagram(DATAGRAMS[2], CALLER)
    pair.deliver()
    assert pair.follower.replica.applied_seq == 1 and pair.follower.pending_entries == 2
    pair.advance(0.005)
    assert pair.follower.stats["payload_requests"] == 0  # still within payload_wait_s
    pair.advance(0.01)
    pair.deliver()  # PayloadRequest([2]) out, Payloads back, entries 2 and 3 applied
    assert pair.follower.stats["payload_requests"] == 1 and pair.follower.stats["payloads_received"] == 1
    assert pair.follower.replica.applied_seq == 3
    assert pair.follower.replica.gateway.state_digest() == pair.gateway.state_digest()
    assert len(pair.sent) == 3  # every forwarded INVITE released once acknowledged


def test_unlogged_tapped_copies_are_handed_over_in_arrival_order() -> None:
    pair = synced_tap_pair()
    pair.datagram(DATAGRAMS[0], CALLER)
    pair.deliver()
    pair.tap(DATAGRAMS[2], CALLER)  # reached the primary, never logged
    pair.tap(DATAGRAMS[1], CALLER)
    handover = pair.take_over()
    assert handover.start_seq == 1 and handover.stranded == 0
    assert handover.unlogged == [(DATAGRAMS[2], CALLER), (DATAGRAMS[1], CALLER)]


def test_a_copy_that_comes_after_its_entry_took_the_primarys_payload_is_not_handed_over() -> None:
    """The tap was slow: entry 2 was applied with the payload the primary sent; its copy comes
    after all. It is entry 2's copy, not a message the log never took: a takeover must not
    process it again (a second 180 or 200 in a caller's call fails the call)."""
    pair = synced_tap_pair()
    pair.datagram(DATAGRAMS[0], CALLER)
    pair.datagram(DATAGRAMS[1], CALLER, tapped=False)
    pair.deliver()
    pair.advance(0.02)
    pair.deliver()
    assert pair.follower.replica.applied_seq == 2 and pair.follower.stats["payloads_received"] == 1
    pair.tap(DATAGRAMS[1], CALLER)  # late
    pair.tap(DATAGRAMS[2], CALLER)  # reached the primary, never logged
    handover = pair.take_over()
    assert handover.unlogged == [(DATAGRAMS[2], CALLER)]
