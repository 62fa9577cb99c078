"""The recorder and the follower, wired in memory (`Pair`): output commit, the commit
timeout, payload retention, snapshots in parts sent over many turns while calls change, a
shadow's join, and the one divergence policy."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from sipshadow.core import GatewayConfig, MemberSpec
from sipshadow.replication import recorder as recorder_module
from sipshadow.replication.effects import Effects
from sipshadow.replication.follower import Follower
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
    assert pair.recorder.attached and pair.follower.synced and not pair.recorder.joining
    return pair


def test_without_a_shadow_outputs_leave_at_once_and_nothing_is_logged() -> None:
    pair = Pair(CONFIG)
    outputs = pair.datagram(invite(1), CALLER)
    assert pair.sent == outputs and pair.recorder.take_frames() == []
    assert pair.recorder.seq == pair.recorder.released == 1


def test_outputs_wait_for_the_shadows_acknowledgement() -> None:
    pair = joined()
    outputs = pair.datagram(invite(1), CALLER)
    assert outputs and pair.sent == []  # held: the shadow has not acknowledged entry 1
    pair.to_shadow_only()  # the shadow applied it, but its Ack is lost on the way
    assert pair.follower.replica.applied_seq == 1 and pair.sent == []
    pair.recorder.receive(Ack(1), 0.0)
    assert pair.recorder.released == 1 and pair.recorder.acked == 1


def test_an_ack_beyond_the_log_releases_only_what_was_logged() -> None:
    pair = joined()
    pair.datagram(invite(1), CALLER)
    effects = pair.recorder.receive(Ack(10**9), 0.0)
    assert len(effects.send) == 1 and pair.recorder.acked == pair.recorder.released == 1
    pair.datagram(invite(2), CALLER)
    assert pair.recorder.next_deadline() is not None  # entry 2 is still held


def test_a_shadow_that_stops_acknowledging_is_not_waited_for_and_dropped_if_it_never_catches_up() -> None:
    pair = joined(commit_timeout_s=0.2)
    pair.datagram(invite(1), CALLER)
    pair.to_shadow_only()
    assert pair.recorder.next_deadline() == 0.2
    pair.advance(0.19)
    assert pair.sent == [] and pair.lapses == []
    pair.advance(0.02)
    assert len(pair.sent) == 1 and pair.lapses and "did not acknowledge for 210 ms" in pair.lapses[0]
    assert pair.recorder.attached and pair.recorder.joining and pair.recorder.stats["commit_timeouts"] == 1
    outputs = pair.datagram(invite(2), CALLER)  # not waited for now
    assert pair.sent[-1:] == outputs and pair.dropped == []
    assert pair.recorder.next_deadline() == pytest.approx(0.21 + pair.recorder.join_timeout_s)
    pair.advance(pair.recorder.join_timeout_s)
    assert not pair.recorder.attached and pair.dropped == ["shadow did not catch up with the log within 10 s"]
    assert pair.recorder.stats["join_timeouts"] == 1 and pair.recorder.stats["shadow_losses"] == 1


def test_a_slow_shadow_catches_up_from_the_log_with_no_new_snapshot() -> None:
    """A shadow late past the commit timeout (a busy host) is not dropped: its link stays, it
    replays what it missed, and output commit holds outputs for it again."""
    pair = joined(commit_timeout_s=0.2)
    pair.datagram(invite(1), CALLER)
    pair.to_shadow_only()  # its ack is lost: late, as if its host were busy
    pair.advance(0.21)
    assert pair.recorder.joining and pair.recorder.stats["commit_lapses"] == 1
    pair.datagram(invite(2), CALLER)
    pair.deliver()  # entry 2 and its ack go through
    assert not pair.recorder.joining and pair.recorder.stats["joins"] == 2
    assert pair.recorder.stats["snapshots_sent"] == 1 and pair.follower.stats["snapshots"] == 1
    outputs = pair.datagram(invite(3), CALLER)
    assert outputs and pair.sent[-1:] != outputs  # held again
    pair.deliver()
    assert pair.follower.replica.gateway.state_digest() == pair.gateway.state_digest()


def test_a_shadow_silent_on_the_heartbeat_link_is_not_waited_for() -> None:
    pair = joined()
    outputs = pair.datagram(invite(1), CALLER)
    assert pair.sent == []
    released = pair.recorder.stop_waiting(pair.now)
    assert released == outputs and pair.recorder.joining and pair.recorder.attached
    assert pair.recorder.stop_waiting(pair.now) == []  # once: it is not waited for already


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
    effects = pair.recorder.receive(PayloadRequest([2, 7]), 0.0)
    assert effects.write == [Payloads([(2, invite(2))])]
    pair.recorder.receive(Ack(1), 0.0)
    assert pair.recorder.receive(PayloadRequest([1]), 0.0).write == [Payloads([])]


def test_a_big_snapshot_arrives_in_parts(monkeypatch: object) -> None:
    pair = Pair(CONFIG)
    for number in range(5):
        pair.datagram(invite(number), CALLER)
    monkeypatch.setattr(recorder_module, "SNAPSHOT_ROWS_PER_FRAME", 2)  # type: ignore[attr-defined]
    snapshot, *_ = pair.recorder.attach(0.0).write
    parts = []
    while pair.recorder.exporting:
        parts += pair.recorder.take_frames()
    assert isinstance(snapshot, Snapshot) and snapshot.parts == 3 == len(parts)
    assert all(isinstance(part, SnapshotRows) for part in parts)
    written = [snapshot, *parts]
    follower = pair.follower
    follower.connected(0)
    for message in written[:-1]:
        assert follower.receive(message, 0.0).write == [] and not follower.synced
    assert follower.receive(written[-1], 0.0).write == [Ack(5)] and follower.synced
    assert follower.replica.gateway.state_digest() == pair.gateway.state_digest()


def test_a_divergence_drops_the_link_and_the_next_snapshot_repairs_it() -> None:
    pair = joined()
    pair.datagram(invite(1), CALLER)
    [frame] = pair.recorder.take_frames()
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


def test_a_snapshot_sent_over_many_turns_is_the_state_at_the_hello(monkeypatch: object) -> None:
    """Calls answered, hung up, reaped and opened while the rows leave two a turn: the shadow
    restores the cut, replays what came after it, and holds the primary's state exactly."""
    monkeypatch.setattr(recorder_module, "SNAPSHOT_ROWS_PER_FRAME", 2)  # type: ignore[attr-defined]
    pair = Pair(CONFIG)
    forwarded = [pair.datagram(invite(number), CALLER)[0].data for number in range(12)]
    pair.now = CONFIG.early_timeout_s + 1  # Timer C is due: the timer below reaps the unanswered calls
    pair.connect()
    pair.turn()  # the Hello reaches the primary: the cut, and the Snapshot header
    assert pair.recorder.exporting and pair.recorder.joining
    changes = [
        lambda: pair.datagram(response_to(forwarded[0], 200, "OK"), MEMBERS[0]),
        lambda: pair.datagram(response_to(forwarded[1], 180, "Ringing"), MEMBERS[0]),
        lambda: pair.datagram(response_to(forwarded[2], 486, "Busy Here"), MEMBERS[0]),
        lambda: pair.datagram(invite(20), CALLER),
        lambda: pair.timer(),  # reaps the calls nobody answered, in the middle of the transfer
    ]
    turns = 0
    while pair.recorder.exporting:
        if turns < len(changes):
            changes[turns]()
        pair.turn()
        turns += 1
    assert turns == 5  # 12 rows, 2 a frame (the first with the header): a change in each next turn
    pair.deliver()
    assert pair.gateway.counters.dialogs_reaped_early > 0 and len(pair.gateway.table) < 12
    follower = pair.follower
    assert follower.synced and follower.stats["divergences"] == 0
    assert follower.replica.gateway.state_digest() == pair.gateway.state_digest()
    assert follower.replica.applied_seq == pair.recorder.seq
    assert not pair.recorder.joining and pair.recorder.stats["joins"] == 1


def test_a_joining_shadow_holds_no_output_until_it_has_caught_up() -> None:
    """Outputs leave at once while the shadow takes its snapshot and replays; once an ack leaves
    nothing older than a quarter of the commit timeout unacknowledged, output commit holds them."""
    pair = Pair(CONFIG, commit_timeout_s=0.2)
    pair.datagram(invite(1), CALLER)
    pair.connect()
    pair.turn()  # the Hello in; the Snapshot and its one row out
    outputs = pair.datagram(invite(2), CALLER)
    assert pair.recorder.joining and pair.sent[-1:] == outputs  # not held: the shadow is joining
    pair.now += 0.1
    pair.turn()  # the snapshot's ack comes back while entry 2, 100 ms old, is unacknowledged
    assert pair.recorder.acked == 1 and pair.recorder.joining
    outputs = pair.datagram(invite(3), CALLER)
    assert pair.sent[-1:] == outputs
    pair.turn()  # entry 2's ack: only entry 3, just logged, is left unacknowledged
    assert not pair.recorder.joining and pair.recorder.stats["joins"] == 1
    outputs = pair.datagram(invite(4), CALLER)
    assert outputs and pair.sent[-1:] != outputs  # held now: output commit is on
    pair.deliver()
    assert pair.sent[-1:] == outputs and pair.follower.stats["divergences"] == 0


def test_a_shadow_that_never_catches_up_is_dropped_at_the_join_timeout() -> None:
    pair = Pair(CONFIG)
    pair.recorder.join_timeout_s = 5.0
    pair.connect()
    pair.turn()
    assert pair.recorder.joining and pair.recorder.next_deadline() == 5.0
    pair.advance(4.9)
    assert pair.recorder.attached
    pair.advance(0.2)
    assert not pair.recorder.attached and pair.recorder.stats["join_timeouts"] == 1
    assert pair.dropped == ["shadow did not catch up with the log within 5 s"]


def test_a_snapshot_that_does_not_fit_is_refused_and_never_raises() -> None:
    """A malformed row, or rows that do not add up to the snapshot's digest: the follower says
    so and asks for a new connection (a new snapshot); nothing raises out of it."""
    primary = Pair(CONFIG)
    primary.datagram(invite(1), CALLER)
    snapshot, *_ = primary.recorder.attach(0.0).write
    [rows] = primary.recorder.take_frames()
    assert isinstance(snapshot, Snapshot) and isinstance(rows, SnapshotRows)
    for bad in (SnapshotRows([("c1", 0)]), SnapshotRows([(*rows.rows[0][:-1], rows.rows[0][-1] ^ 1)])):
        follower = Follower(CONFIG, node_id="shadow")
        follower.connected(0)
        assert follower.receive(snapshot, 0.0) == Effects()
        effects = follower.receive(bad, 0.0)
        assert effects.drop.startswith("snapshot refused") and not follower.synced
        assert follower.stats["refused_frames"] == 1
    follower = Follower(CONFIG, node_id="shadow")
    follower.connected(0)
    follower.receive(snapshot, 0.0)
    assert follower.receive(rows, 0.0).write == [Ack(1)] and follower.synced  # the good rows fit
