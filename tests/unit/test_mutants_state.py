"""State transfer: a shadow that joins by `export_state`/`import_state` in the middle of calls
routes them exactly as the primary does from then on (found by mutation testing: no test
joined with dialogs, attempts and health in the snapshot)."""

from __future__ import annotations

import json

import pytest

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.core.dialogs import DialogState
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.test_gateway import FixedEntropy, answer, only, send, start_call

CALLEE = "callee-tag"


def config(**options: float) -> GatewayConfig:
    members = tuple(MemberSpec(address) for address in MEMBERS)
    settings: dict[str, float] = {"probe_interval_s": 1.0, "probe_misses": 2, "terminated_linger_s": 32.0}
    settings.update(options)
    return GatewayConfig(service=ALG, members=members, **settings)  # type: ignore[arg-type]


def busy_primary() -> Gateway:
    """A primary with one of everything: a confirmed call, a ringing one (early dialog), a
    pending INVITE, a rejected one lingering for its ACK, an ended one lingering, a call whose
    2xx lost our Record-Route, a subscription, a member down, probes outstanding, counters."""
    gateway = Gateway(config(), FixedEntropy([]))
    gateway.handle(TimerExpired(0.0))  # the first probe round: both outstanding
    answer(gateway, start_call(gateway, "confirmed", now=1.0), 200, now=1.0)
    answer(gateway, start_call(gateway, "ringing", now=1.0), 180, now=1.5)
    start_call(gateway, "pending", now=2.0)
    answer(gateway, start_call(gateway, "rejected", now=2.0), 486, now=2.5)
    answer(gateway, start_call(gateway, "ended", now=3.0), 200, now=3.0)
    send(gateway, request("BYE", call_id="ended", to_tag=CALLEE, cseq=2), now=3.5)
    off_path = start_call(gateway, "off-path", now=3.0)
    data = response_to(off_path.data, 200, "OK", to_tag=CALLEE)
    data = b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Record-Route"))
    send(gateway, data, off_path.destination, 3.2)
    only(send(gateway, request("SUBSCRIBE", call_id="sub", branch="z9hG4bKsub"), now=3.3))
    send(gateway, b"not sip at all", now=3.4)
    for now in (4.0, 5.0):  # member 1 never answers: down after two rounds; member 0 does
        for probe in gateway.handle(TimerExpired(now)):
            if probe.destination == MEMBERS[0]:
                send(gateway, response_to(probe.data, 200, "OK", to_tag="m"), MEMBERS[0], now)
    assert [member.up for member in gateway.health.members] == [True, False]
    return gateway


def joined(primary: Gateway, state: dict[str, object] | None = None) -> Gateway:
    shadow = Gateway(config(), FixedEntropy([]))
    shadow.import_state(primary.export_state() if state is None else state)  # type: ignore[arg-type]
    return shadow


def both(primary: Gateway, shadow: Gateway, data: bytes, source: tuple[str, int], now: float) -> list:
    """Feed the same datagram to both; they must send the same datagrams and agree after."""
    expected = primary.handle(MessageReceived(data, source, now))
    assert shadow.handle(MessageReceived(data, source, now)) == expected
    assert shadow.state_digest() == primary.state_digest()
    return expected


def test_a_joined_shadow_holds_the_primarys_state_exactly() -> None:
    primary = busy_primary()
    shadow = joined(primary)
    assert shadow.export_state() == primary.export_state()
    assert shadow.state_digest() == primary.state_digest()
    assert shadow.table.active_per_member == primary.table.active_per_member == [2, 1]
    assert shadow.next_deadline() == primary.next_deadline()
    assert shadow.health.healthy() == [0]
    assert shadow.counters == primary.counters
    call = shadow.table.get("ringing")
    assert call is not None and call.dialogs[("caller-tag", CALLEE)].state is DialogState.EARLY


def test_a_joined_shadow_routes_the_calls_that_were_up_both_ways() -> None:
    primary = busy_primary()
    shadow = joined(primary)
    # caller side: to the member that holds the call
    out = both(primary, shadow, request("INFO", call_id="confirmed", to_tag=CALLEE, cseq=2), CALLER, 6.0)
    assert only(out).destination == MEMBERS[0]
    # callee side: back to the caller, even for the ringing call's early dialog
    for call_id in ("confirmed", "ringing"):
        bye = request("BYE", call_id=call_id, from_tag=CALLEE, to_tag="caller-tag", cseq=7,
                      via_host="192.0.2.21:5080", branch=f"z9hG4bKm{call_id}")  # fmt: skip
        assert only(both(primary, shadow, bye, MEMBERS[0], 6.5)).destination == CALLER
    # the rejected INVITE's ACK still routes; an unknown tag pair gets 481
    ack = request("ACK", call_id="rejected", to_tag=CALLEE, branch="z9hG4bKrejected")
    assert only(both(primary, shadow, ack, CALLER, 7.0)).destination == MEMBERS[1]
    stranger = only(both(primary, shadow, request("BYE", call_id="confirmed", to_tag="x", cseq=3), CALLER, 7.0))
    assert stranger.data.startswith(b"SIP/2.0 481 ")


def test_a_joined_shadow_answers_the_pending_invite_and_expires_what_the_primary_expires() -> None:
    primary = busy_primary()
    shadow = joined(primary)
    pending = request("INVITE", call_id="pending", branch="z9hG4bKpending")
    forwarded = only(both(primary, shadow, pending, CALLER, 8.0))  # a retransmission
    answered = response_to(forwarded.data, 200, "OK")
    assert only(both(primary, shadow, answered, forwarded.destination, 9.0)).destination == CALLER
    for now in (40.0, 60.0, 400.0, 8000.0):
        assert shadow.handle(TimerExpired(now)) == primary.handle(TimerExpired(now))
        assert shadow.export_state() == primary.export_state()
        assert shadow.counters == primary.counters
    assert len(shadow.table) == 0


def test_a_snapshot_that_went_through_json_still_joins() -> None:
    """Tuples arrive as lists and the `rejected` counter's keys as strings."""
    primary = busy_primary()
    primary.counters.reject(481)
    shadow = joined(primary, json.loads(json.dumps(primary.export_state())))
    assert shadow.state_digest() == primary.state_digest()
    assert shadow.counters.rejected == {481: 1}
    assert shadow.export_state()["dialogs_digest"] == primary.export_state()["dialogs_digest"]


def test_a_snapshot_whose_rows_do_not_add_up_to_its_digest_is_refused() -> None:
    state = busy_primary().export_state()
    state["dialogs_digest"] ^= 1
    with pytest.raises(ValueError, match=r"^snapshot digest does not match its dialog rows$"):
        joined(busy_primary(), state)


def test_a_snapshot_without_a_digest_is_taken_as_it_is() -> None:
    primary = busy_primary()
    state = primary.export_state()
    del state["dialogs_digest"]
    assert joined(primary, state).state_digest() == primary.state_digest()


def test_a_snapshot_for_another_number_of_members_is_refused() -> None:
    state = busy_primary().export_state()
    state["health"]["members"].append((True, 0, False, 0))  # type: ignore[index]
    with pytest.raises(ValueError, match="zip"):
        joined(busy_primary(), state)


def test_a_joined_shadow_counts_only_the_live_calls_it_imports() -> None:
    """Active calls per member are recounted from the rows: ended, rejected and off-path calls
    hold no member, so least-active-calls sends the next call where the primary would."""
    primary = busy_primary()
    ended_only = {**primary.export_state()}
    ended_only["dialogs"] = [row for row in ended_only["dialogs"] if row[0] in ("ended", "rejected", "off-path")]
    rows_digest = 0
    for row in ended_only["dialogs"]:
        rows_digest ^= row[-1]
    ended_only["dialogs_digest"] = rows_digest
    shadow = joined(primary, ended_only)
    assert shadow.table.active_per_member == [0, 0]


# -- the digest tells apart what replicas must agree on ----------------------------------------


def table_digest(*, member: int = 0, caller: tuple[str, int] = CALLER, source: tuple[str, int] = CALLER,
                 dialog_caller: tuple[str, int] | None = None) -> int:  # fmt: skip
    from sipshadow.core.dialogs import Attempt, Dialog, DialogTable

    table = DialogTable(2)
    call = table.open("c", member, caller, counted=True)
    table.add_attempt(call, Attempt("z9hG4bKssa", "INVITE", "caller-tag", 1, source, 200.0))
    if dialog_caller is not None:
        table.put_dialog(call, Dialog("caller-tag", CALLEE, DialogState.EARLY, dialog_caller, "z9hG4bKssa", "INVITE",
                                      200.0))  # fmt: skip
    return table.digest


@pytest.mark.parametrize(
    "changed",
    [
        {"member": 1},
        {"caller": ("192.0.2.11", CALLER[1])},
        {"caller": (CALLER[0], 5071)},
        {"source": ("192.0.2.11", CALLER[1])},
        {"source": (CALLER[0], 5071)},
    ],
)
def test_the_digest_tells_apart_calls_that_differ_in_one_routing_field(changed: dict[str, object]) -> None:
    assert table_digest(**changed) != table_digest()  # type: ignore[arg-type]


def test_the_digest_tells_apart_dialogs_whose_callers_differ_in_host_or_port() -> None:
    base = table_digest(dialog_caller=CALLER)
    assert table_digest(member=1, dialog_caller=CALLER) != base
    assert table_digest(dialog_caller=("192.0.2.11", CALLER[1])) != base
    assert table_digest(dialog_caller=(CALLER[0], 5071)) != base


def test_the_state_digest_follows_member_health() -> None:
    gateway = Gateway(config(), FixedEntropy([]))
    digests = {gateway.state_digest()}
    for now in (0.0, 1.0, 2.0):
        gateway.handle(TimerExpired(now))
        digests.add(gateway.state_digest())
    assert len(digests) == 4 and not gateway.health.members[0].up


def test_a_health_monitor_starts_no_round_before_it_is_due_or_when_probing_is_off() -> None:
    from sipshadow.core.health import HealthMonitor

    off = HealthMonitor(2, 0.0, 3)
    assert off.next_round_at is None and off.start_round(100.0) == []
    assert HealthMonitor(0, 1.0, 3).next_round_at is None  # no members, nothing to probe
    monitor = HealthMonitor(2, 1.0, 3)
    assert monitor.start_round(0.0) == [0, 1]
    assert monitor.next_round_at == 1.0
    assert monitor.start_round(0.5) == []
    assert [member.sequence for member in monitor.members] == [1, 1]
    assert monitor.start_round(1.0) == [0, 1]
    assert [(member.sequence, member.misses) for member in monitor.members] == [(2, 1), (2, 1)]
