"""The recorder and the follower, wired in memory (`Pair`): output commit, the commit
timeout, payload retention, snapshots in parts, and the one divergence policy."""

from __future__ import annotations

from msgspec.structs import replace

from sipshadow.core import GatewayConfig, MemberSpec
from sipshadow.replication import recorder as recorder_module
from sipshadow.replication.wire import Ack, Entries, PayloadRequest, Payloads, Snapshot, SnapshotRows
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.replication_pair import Pair

CONFIG = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0)


def invite(number: int) -> bytes:
    return request("INVITE", call_id=f"c{number}", branch=f"z9hG4bK{number}")


def joined(**options: object) -> Pair:
    pair = Pair(CONFIG, **options)  # type: ignore[arg-type]
    pair.connect()
    pair.deliver()
    assert pair.recorder.attached and pair.follower.synced
    return pair


def test_without_a_shadow_outputs_leave_at_once_and_nothing_is_logged() -> None:
    pair = Pair(CONFIG)
    outputs = pair.datagram(invite(1), CALLER)
    assert pair.sent == outputs and pair.recorder.take_entries() == []
    assert pair.recorder.seq == pair.recorder.released == 1


def test_outputs_wait_for_the_shadows_acknowledgement() -> None:
    pair = joined()
    outputs = pair.datagram(invite(1), CALLER)
    assert outputs and pair.sent == []  # held: the shadow has not acknowledged entry 1
    pair.to_shadow_only()  # the shadow applied it, but its Ack is lost on the way
    assert pair.follower.replica.applied_seq == 1 and pair.sent == []
    pair.recorder.receive(Ack(1))
    assert pair.recorder.released == 1 and pair.recorder.acked == 1


def test_an_ack_beyond_the_log_releases_only_what_was_logged() -> None:
    pair = joined()
    pair.datagram(invite(1), CALLER)
    effects = pair.recorder.receive(Ack(10**9))
    assert len(effects.send) == 1 and pair.recorder.acked == pair.recorder.released == 1
    pair.datagram(invite(2), CALLER)
    assert pair.recorder.next_deadline() is not None  # entry 2 is still held


def test_a_shadow_that_stops_acknowledging_is_declared_dead_after_the_commit_timeout() -> None:
    pair = joined(commit_timeout_s=0.2)
    pair.datagram(invite(1), CALLER)
    pair.to_shadow_only()
    assert pair.recorder.next_deadline() == 0.2
    pair.advance(0.19)
    assert pair.sent == [] and pair.dropped == []
    pair.advance(0.02)
    assert len(pair.sent) == 1 and pair.dropped and "did not acknowledge for 210 ms" in pair.dropped[0]
    assert not pair.recorder.attached and pair.recorder.stats["commit_timeouts"] == 1
    outputs = pair.datagram(invite(2), CALLER)  # solo now
    assert pair.sent[-1:] == outputs


def test_without_output_commit_outputs_leave_at_once_and_are_still_logged() -> None:
    pair = joined(output_commit=False)
    outputs = pair.datagram(invite(1), CALLER)
    assert pair.sent == outputs
    pair.deliver()
    assert pair.follower.replica.applied_seq == 1


def test_released_never_runs_ahead_of_what_the_shadow_applied() -> None:
    pair = joined(output_commit=False)
    pair.datagram(invite(1), CALLER)
    pair.deliver()
    pair.follower.note_released(10**6)
    assert pair.follower.replica.released_seq == 1


def test_tap_mode_keeps_payloads_until_acknowledged_and_answers_requests() -> None:
    pair = joined(tap=True)
    pair.datagram(invite(1), CALLER, tapped=False)
    pair.datagram(invite(2), CALLER, tapped=False)
    effects = pair.recorder.receive(PayloadRequest([2, 7]))
    assert effects.write == [Payloads([(2, invite(2))])]
    pair.recorder.receive(Ack(1))
    assert pair.recorder.receive(PayloadRequest([1])).write == [Payloads([])]


def test_a_big_snapshot_arrives_in_parts(monkeypatch: object) -> None:
    pair = Pair(CONFIG)
    for number in range(5):
        pair.datagram(invite(number), CALLER)
    monkeypatch.setattr(recorder_module, "SNAPSHOT_ROWS_PER_FRAME", 2)  # type: ignore[attr-defined]
    effects = pair.recorder.attach()
    snapshot, *parts = effects.write
    assert isinstance(snapshot, Snapshot) and snapshot.parts == 3 == len(parts)
    assert all(isinstance(part, SnapshotRows) for part in parts)
    follower = pair.follower
    follower.connected(0)
    for message in effects.write[:-1]:
        assert follower.receive(message, 0.0).write == [] and not follower.synced
    assert follower.receive(effects.write[-1], 0.0).write == [Ack(5)] and follower.synced
    assert follower.replica.gateway.state_digest() == pair.gateway.state_digest()


def test_a_divergence_drops_the_link_and_the_next_snapshot_repairs_it() -> None:
    pair = joined()
    pair.datagram(invite(1), CALLER)
    [frame] = pair.recorder.take_entries()
    forged = Entries([replace(frame.entries[0], state=frame.entries[0].state ^ 1)], frame.released)
    effects = pair.follower.receive(forged, 0.0)
    assert effects.drop.startswith("diverged") and pair.follower.stats["divergences"] == 1
    assert not pair.follower.synced
    assert pair.follower.receive(Entries([], 0), 0.0).write == []  # nothing counts until a snapshot
    pair.recorder.detach()
    pair.connect()
    pair.deliver()
    assert pair.follower.synced and pair.follower.replica.gateway.state_digest() == pair.gateway.state_digest()


def test_takeover_resends_what_the_old_primary_held() -> None:
    pair = joined()
    ringing = None
    for number in range(2):
        (forwarded,) = pair.datagram(invite(number), CALLER)
        ringing = response_to(forwarded.data, 180, "Ringing"), forwarded.destination
    pair.deliver()
    pair.advance(0.05)  # the INVITEs left well before the end (outside `RESEND_WINDOW_S`)
    assert ringing is not None
    pair.datagram(*ringing)  # from the member the INVITE went to
    pair.to_shadow_only()  # the 180's entry reached the shadow; its release never happened
    handover = pair.take_over()
    (resent,) = handover.resend  # the 180, towards the caller, its own Via popped (§16.7)
    assert handover.start_seq == 3 and resent.destination == CALLER
    assert resent.data.startswith(b"SIP/2.0 180") and b"192.0.2.1:5060;branch" not in resent.data
