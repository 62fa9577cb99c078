"""The gateway core, driven with events and no I/O: dispatch, dialogs, sanity, health."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, SendMessage, TimerExpired
from sipshadow.core.dialogs import DialogState
from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to


class FixedEntropy:
    """Hands out a fixed sequence of draws, as the shadow's replayer will."""

    def __init__(self, draws: list[float]) -> None:
        self.draws: Iterator[float] = iter(draws)

    def random(self) -> float:
        return next(self.draws)


def make_gateway(policy: str = "round-robin", *, probe_interval_s: float = 0.0, **options: float) -> Gateway:
    members = tuple(MemberSpec(address, weight) for address, weight in zip(MEMBERS, (1, 3), strict=True))
    config = GatewayConfig(service=ALG, members=members, policy=policy, probe_interval_s=probe_interval_s, **options)
    return Gateway(config, FixedEntropy([0.1, 0.9, 0.3]))


def send(gateway: Gateway, data: bytes, source: tuple[str, int] = CALLER, now: float = 0.0) -> list[SendMessage]:
    return gateway.handle(MessageReceived(data, source, now))


def only(outputs: list[SendMessage]) -> SendMessage:
    assert len(outputs) == 1, outputs
    return outputs[0]


def status_of(output: SendMessage) -> int:
    return parse_message(output.data).status


def dialog_state(gateway: Gateway, call_id: str = "call-1@caller", to_tag: str = "callee-tag") -> DialogState:
    call = gateway.table.get(call_id)
    assert call is not None, call_id
    return call.dialogs[("caller-tag", to_tag)].state


def start_call(gateway: Gateway, call_id: str = "call-1@caller", now: float = 0.0) -> SendMessage:
    return only(send(gateway, request("INVITE", call_id=call_id, branch=f"z9hG4bK{call_id}"), now=now))


def answer(gateway: Gateway, forwarded: SendMessage, status: int, now: float = 0.0) -> SendMessage:
    return only(send(gateway, response_to(forwarded.data, status, "X"), forwarded.destination, now))


def test_new_invite_goes_to_a_member_with_our_via_record_route_and_max_forwards() -> None:
    gateway = make_gateway()
    out = start_call(gateway)
    assert out.destination == MEMBERS[0]
    message = parse_message(out.data)
    vias = message.values("via")
    assert vias[0].startswith("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKss")
    assert vias[1] == "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcall-1@caller"
    assert message.values("record-route") == ["<sip:192.0.2.1:5060;lr>"]
    assert message.first("max-forwards") == "69"
    assert message.uri == "sip:bob@192.0.2.1:5060"


def test_round_robin_spreads_400_calls_evenly() -> None:
    gateway = make_gateway()
    destinations = [start_call(gateway, f"c{index}").destination for index in range(400)]
    assert destinations.count(MEMBERS[0]) == destinations.count(MEMBERS[1]) == 200
    assert gateway.counters.calls_per_member == [200, 200]


def test_responses_return_along_the_via_stack_and_confirm_the_dialog() -> None:
    gateway = make_gateway()
    forwarded = start_call(gateway)
    ringing = answer(gateway, forwarded, 180)
    assert ringing.destination == CALLER
    assert parse_message(ringing.data).values("via") == ["SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcall-1@caller"]
    assert dialog_state(gateway) is DialogState.EARLY
    answer(gateway, forwarded, 200)
    assert dialog_state(gateway) is DialogState.CONFIRMED
    assert gateway.table.active_per_member == [1, 0]


@pytest.mark.parametrize("method", ["ACK", "BYE", "INVITE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER"])
def test_in_dialog_requests_follow_the_dialog_whatever_the_request_uri(method: str) -> None:
    gateway = make_gateway()
    start_call(gateway, "other")  # member 0
    forwarded = start_call(gateway)  # member 1
    answer(gateway, forwarded, 200)
    out = only(send(gateway, request(method, to_tag="callee-tag", cseq=2, uri="sip:bob@203.0.113.9:5999")))
    assert out.destination == MEMBERS[1]


def test_callee_side_request_goes_back_to_the_caller() -> None:
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 200)
    bye = request("BYE", from_tag="callee-tag", to_tag="caller-tag", via_host="192.0.2.21:5080", branch="z9hG4bKm1")
    assert only(send(gateway, bye, MEMBERS[0])).destination == CALLER


def test_bye_terminates_and_frees_the_member_and_the_dialog_lingers_then_goes() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    answer(gateway, start_call(gateway), 200)
    send(gateway, request("BYE", to_tag="callee-tag", cseq=2), now=10.0)
    assert gateway.table.active_per_member == [0, 0]
    gateway.handle(TimerExpired(41.9))
    assert len(gateway.table) == 1
    gateway.handle(TimerExpired(42.0))
    assert len(gateway.table) == 0


def test_in_dialog_request_for_unknown_dialog_gets_481_and_unknown_ack_is_dropped() -> None:
    gateway = make_gateway()
    out = only(send(gateway, request("BYE", to_tag="nobody", cseq=2)))
    assert (out.destination, status_of(out)) == (CALLER, 481)
    assert send(gateway, request("ACK", to_tag="nobody", cseq=1)) == []
    assert gateway.counters.unroutable_acks == 1


def test_cancel_goes_where_its_invite_went_with_the_same_branch() -> None:
    gateway = make_gateway()
    start_call(gateway, "other")
    invite = start_call(gateway)
    cancel = only(send(gateway, request("CANCEL", branch="z9hG4bKcall-1@caller")))
    assert cancel.destination == invite.destination == MEMBERS[1]
    assert parse_message(cancel.data).top_via.branch == parse_message(invite.data).top_via.branch


def test_non_2xx_final_ends_an_early_dialog_and_its_ack_still_routes() -> None:
    gateway = make_gateway()
    forwarded = start_call(gateway)
    answer(gateway, forwarded, 487)
    assert dialog_state(gateway) is DialogState.TERMINATED
    assert gateway.table.active_per_member == [0, 0]
    ack = request("ACK", to_tag="callee-tag", branch="z9hG4bKcall-1@caller")
    out = only(send(gateway, ack))
    assert out.destination == MEMBERS[0]
    assert parse_message(out.data).top_via.branch == parse_message(forwarded.data).top_via.branch


def test_invite_retried_after_challenge_reuses_the_member() -> None:
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 407)
    retry = request("INVITE", cseq=2, branch="z9hG4bKretry")
    assert only(send(gateway, retry)).destination == MEMBERS[0]
    assert gateway.table.active_per_member == [1, 0]
    assert gateway.counters.calls == 1


def test_options_to_the_gateway_itself_gets_200() -> None:
    gateway = make_gateway()
    out = only(send(gateway, request("OPTIONS", uri="sip:192.0.2.1:5060")))
    assert (out.destination, status_of(out)) == (CALLER, 200)
    reply = parse_message(out.data)
    assert reply.to_tag and reply.call_id == "call-1@caller"


def test_max_forwards_zero_gets_483_and_a_missing_one_is_added() -> None:
    gateway = make_gateway()
    assert status_of(only(send(gateway, request("INVITE", max_forwards="0")))) == 483
    out = only(send(gateway, request("INVITE", call_id="c2", max_forwards=None)))
    assert parse_message(out.data).first("max-forwards") == "69"


BAD_REQUESTS = {
    "Missing Via": request("INVITE").replace(b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcaller1\r\n", b""),
    "Missing Call-ID": request("INVITE").replace(b"Call-ID: call-1@caller\r\n", b""),
    "Missing CSeq": request("INVITE").replace(b"CSeq: 1 INVITE\r\n", b""),
    "Missing From": request("INVITE").replace(b'From: "Alice" <sip:alice@example.org>;tag=caller-tag\r\n', b""),
    "Missing To": request("INVITE").replace(b"To: <sip:bob@example.org>\r\n", b""),
    "CSeq method does not match request method": request("INVITE", cseq_method="BYE"),
    "Malformed CSeq": request("INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"),
    "Bad Max-Forwards": request("INVITE", max_forwards="ten"),
    "Content-Length exceeds body": request("INVITE", body="v=0\r\n").replace(
        b"Content-Length: 5", b"Content-Length: 50"
    ),
    "Duplicate Call-ID": request("INVITE", extra=("Call-ID: second",)),
}


@pytest.mark.parametrize("reason", BAD_REQUESTS)
def test_insane_request_gets_400_with_a_reason_and_changes_nothing(reason: str) -> None:
    gateway = make_gateway()
    outputs = send(gateway, BAD_REQUESTS[reason])
    assert len(gateway.table) == 0
    if reason == "Missing Via":
        assert outputs == []  # no Via: nowhere to answer
    else:
        reply = parse_message(only(outputs).data)
        assert (reply.status, reply.reason) == (400, reason)
    assert gateway.counters.malformed_requests == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff" * 40,
        b"SIP/2.0 200 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: nonsense\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n",
        b"\r\n\r\n",
    ],
)
def test_garbage_never_raises_and_is_counted(data: bytes) -> None:
    gateway = make_gateway()
    send(gateway, data)
    c = gateway.counters
    assert c.malformed_requests + c.malformed_responses + c.keepalives + c.stray_responses == 1


def test_unparseable_request_with_a_via_still_gets_400() -> None:
    data = request("INVITE").replace(b"INVITE sip:bob@192.0.2.1:5060 SIP/2.0", b"INVITE  sip:bob SIP/2.0")
    out = only(send(make_gateway(), data))
    assert (out.destination, status_of(out)) == (CALLER, 400)


def test_response_without_our_via_is_dropped_as_stray() -> None:
    gateway = make_gateway()
    assert send(gateway, response_to(request("INVITE"), 200, "OK"), MEMBERS[0]) == []
    assert gateway.counters.stray_responses == 1


def test_unanswered_probes_take_a_member_out_and_its_calls_keep_their_route() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=2)
    probes = gateway.handle(TimerExpired(0.0))
    assert sorted(probe.destination for probe in probes) == sorted(MEMBERS)
    answer(gateway, start_call(gateway, "held"), 200)  # on member 0
    for now in (1.0, 2.0):
        for probe in gateway.handle(TimerExpired(now)):
            if probe.destination == MEMBERS[1]:
                send(gateway, response_to(probe.data, 200, "OK", to_tag="m"), MEMBERS[1], now)
    assert [member.up for member in gateway.health.members] == [False, True]
    assert {start_call(gateway, f"new{index}").destination for index in range(4)} == {MEMBERS[1]}
    assert only(send(gateway, request("BYE", call_id="held", to_tag="callee-tag", cseq=2))).destination == MEMBERS[0]
    probe = next(p for p in gateway.handle(TimerExpired(3.0)) if p.destination == MEMBERS[0])
    send(gateway, response_to(probe.data, 200, "OK", to_tag="m"), MEMBERS[0], 3.0)
    assert gateway.health.members[0].up and gateway.counters.member_up_events == 1


def test_with_every_member_down_new_calls_are_routed_anyway_and_counted() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    for now in (0.0, 1.0):
        gateway.handle(TimerExpired(now))
    assert not any(member.up for member in gateway.health.members)
    assert only(send(gateway, request("INVITE"))).destination in MEMBERS
    assert gateway.counters.routed_all_down == 1 and gateway.counters.rejected == {}


def test_early_and_confirmed_dialogs_are_reaped_by_their_timers() -> None:
    gateway = make_gateway(early_timeout_s=10.0, confirmed_timeout_s=100.0)
    start_call(gateway, "never-answered")
    answer(gateway, start_call(gateway, "bye-lost"), 200)
    gateway.handle(TimerExpired(10.0))
    assert gateway.counters.dialogs_reaped_early == 1
    gateway.handle(TimerExpired(100.0))
    assert gateway.counters.dialogs_reaped_confirmed == 1
    assert len(gateway.table) == 0 and gateway.table.active_per_member == [0, 0]


def test_in_dialog_activity_postpones_the_confirmed_timeout() -> None:
    gateway = make_gateway(confirmed_timeout_s=100.0)
    answer(gateway, start_call(gateway), 200)
    send(gateway, request("INFO", to_tag="callee-tag", cseq=2), now=90.0)
    gateway.handle(TimerExpired(100.0))
    assert len(gateway.table) == 1
    gateway.handle(TimerExpired(190.0))
    assert len(gateway.table) == 0


def test_least_active_calls_fills_the_emptier_member() -> None:
    gateway = make_gateway("least-active-calls")
    first = start_call(gateway, "a")
    second = start_call(gateway, "b")
    assert second.destination != first.destination
    answer(gateway, first, 200)
    answer(gateway, start_call(gateway, "c"), 200)  # a tie: the first configured member
    send(gateway, request("BYE", call_id="a", to_tag="callee-tag", cseq=2))
    assert gateway.table.active_per_member == [1, 1]
    send(gateway, request("BYE", call_id="c", to_tag="callee-tag", cseq=2))
    assert start_call(gateway, "d").destination == first.destination


def test_weighted_random_uses_only_the_injected_draws() -> None:
    gateway = make_gateway("weighted-random")  # weights 1 and 3; draws 0.1, 0.9, 0.3
    destinations = [start_call(gateway, name).destination for name in "abc"]
    assert destinations == [MEMBERS[0], MEMBERS[1], MEMBERS[1]]


def test_call_id_hash_is_stable_across_gateways() -> None:
    first, second = make_gateway("call-id-hash"), make_gateway("call-id-hash")
    for name in ("x", "y", "z", "w"):
        assert start_call(first, name).destination == start_call(second, name).destination


def test_two_gateways_fed_the_same_events_emit_the_same_bytes() -> None:
    events = [
        MessageReceived(request("INVITE", call_id=f"c{i}", branch=f"z9hG4bK{i}"), CALLER, float(i)) for i in range(10)
    ] + [TimerExpired(50.0)]
    outputs = [[gateway.handle(event) for event in events] for gateway in (make_gateway(), make_gateway())]
    assert outputs[0] == outputs[1]
