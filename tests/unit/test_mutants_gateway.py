"""The gateway's edges that mutation testing found untested: member health and probes, the
next deadline, the ALG's own answers to broken requests, CANCEL and NOTIFY matching, and the
counters an operator reads (each counts one per event, no more)."""

from __future__ import annotations

import re

import pytest

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.core.dialogs import DialogState
from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.test_gateway import FixedEntropy, answer, make_gateway, only, send, start_call, status_of

# -- probes and member health -------------------------------------------------------------


def probe_round(gateway: Gateway, now: float) -> dict[tuple[str, int], bytes]:
    return {probe.destination: probe.data for probe in gateway.handle(TimerExpired(now))}


def reply_to_probe(gateway: Gateway, probe: bytes, source: tuple[str, int], now: float) -> None:
    assert send(gateway, response_to(probe, 200, "OK", to_tag="m"), source, now) == []


def test_a_member_that_answers_every_probe_stays_up_round_after_round() -> None:
    """With one miss allowed, a member is taken out only by a round it left unanswered."""
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    for now in (0.0, 1.0, 2.0, 3.0):
        probes = probe_round(gateway, now)
        reply_to_probe(gateway, probes[MEMBERS[0]], MEMBERS[0], now + 0.5)
    assert [member.up for member in gateway.health.members] == [True, False]
    counters = gateway.counters
    assert (counters.stray_probe_answers, counters.member_down_events, counters.member_up_events) == (0, 1, 0)
    assert counters.probes_sent == 8


def test_an_answer_to_the_current_probe_from_another_address_is_forged_and_proves_nothing() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    probes = probe_round(gateway, 0.0)
    reply_to_probe(gateway, probes[MEMBERS[1]], MEMBERS[0], 0.5)  # member 0 answering for member 1
    reply_to_probe(gateway, probes[MEMBERS[1]], ("203.0.113.66", 5060), 0.5)
    assert (gateway.counters.forged_responses, gateway.counters.stray_probe_answers) == (2, 0)
    probe_round(gateway, 1.0)
    assert [member.up for member in gateway.health.members] == [False, False]


def test_a_second_answer_to_the_same_probe_is_stray() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    probes = probe_round(gateway, 0.0)
    reply_to_probe(gateway, probes[MEMBERS[0]], MEMBERS[0], 0.5)
    reply_to_probe(gateway, probes[MEMBERS[0]], MEMBERS[0], 0.6)
    assert gateway.counters.stray_probe_answers == 1
    assert not gateway.health.members[0].outstanding


@pytest.mark.parametrize(
    "suffix", ["2.1", "9.1", "0.x", "x.1", "0", "0.", ".1", "0.1x", "\u0660.1", "0.\u0661", "", "0.1.1"]
)
def test_a_probe_branch_naming_no_member_or_no_sequence_is_forged(suffix: str) -> None:
    """Branches `z9hG4bKssp.<member index>.<round>.<MAC>` with anything else there are forged,
    with or without the real probe's MAC after them, even from the member's own address."""
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    probes = probe_round(gateway, 0.0)
    real = re.search(rb"branch=z9hG4bKssp\.0\.1\.([0-9a-f]+)", probes[MEMBERS[0]])
    assert real is not None
    for fake in (f"z9hG4bKssp.{suffix}", f"z9hG4bKssp.{suffix}.{real[1].decode()}"):
        forged = probes[MEMBERS[0]].replace(real[0], f"branch={fake}".encode())
        send(gateway, response_to(forged, 200, "OK", to_tag="m"), MEMBERS[0], 0.5)
    assert (gateway.counters.forged_responses, gateway.counters.stray_probe_answers) == (2, 0)
    assert gateway.health.members[0].outstanding


def test_a_probe_to_an_ipv6_member_brackets_its_address() -> None:
    member = ("2001:db8::21", 5080)
    config = GatewayConfig(service=ALG, members=(MemberSpec(member),), probe_interval_s=1.0)
    probe = only(Gateway(config, FixedEntropy([])).handle(TimerExpired(0.0)))
    message = parse_message(probe.data)
    assert probe.destination == member
    assert message.uri == "sip:[2001:db8::21]:5080"
    assert message.first("to") == "<sip:[2001:db8::21]:5080>"


def test_a_probe_is_a_complete_options_request() -> None:
    """§11.1: an OPTIONS with every mandatory header, Max-Forwards 70 and an empty body."""
    gateway = make_gateway(probe_interval_s=1.0)
    probe = probe_round(gateway, 0.0)[MEMBERS[1]]
    message = parse_message(probe)
    assert message.start_line() == "OPTIONS sip:192.0.2.22:5080 SIP/2.0"
    assert message.first("max-forwards") == "70"
    assert message.first("content-length") == "0"
    assert message.cseq == (1, "OPTIONS")
    assert message.top_via is not None and re.fullmatch(r"z9hG4bKssp\.1\.1\.[0-9a-f]{20}", message.top_via.branch or "")
    assert message.call_id == "ssprobe-1-1@192.0.2.1:5060"
    assert message.from_tag == "ssprobe1" and message.to_tag is None
    assert probe.endswith(b"\r\n\r\n")


# -- the next deadline ----------------------------------------------------------------------


def test_the_next_deadline_is_the_earlier_of_the_next_probe_round_and_the_first_expiry() -> None:
    idle = make_gateway(probe_interval_s=0.0)
    assert idle.next_deadline() is None
    probing = make_gateway(probe_interval_s=5.0, early_timeout_s=3.0)
    assert probing.next_deadline() == 0.0  # the first round is due at once
    probe_round(probing, 0.0)
    assert probing.next_deadline() == 5.0
    start_call(probing, now=1.0)
    assert probing.next_deadline() == 4.0  # Timer C of the call comes first
    probing.handle(TimerExpired(4.0))
    assert probing.next_deadline() == 5.0
    calls_only = make_gateway(probe_interval_s=0.0, early_timeout_s=3.0)
    start_call(calls_only, now=2.0)
    assert calls_only.next_deadline() == 5.0
    tie = make_gateway(probe_interval_s=5.0, early_timeout_s=5.0)
    start_call(tie, now=0.0)
    probe_round(tie, 0.0)
    assert tie.next_deadline() == 5.0


# -- answers to broken requests ---------------------------------------------------------------


BAD_VIA_PARAMS = b"Via: SIP/2.0/UDP 192.0.2.10:5090;branch=z9hG4bK1;;=x"


def test_a_request_whose_via_parameters_are_broken_is_answered_at_the_via_port() -> None:
    """§18.2.2: the answer goes to the source address at the sent-by port of the top Via,
    read leniently when its parameters do not parse."""
    data = request("INVITE").replace(b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcaller1", BAD_VIA_PARAMS)
    gateway = make_gateway()
    out = only(send(gateway, data))
    assert out.destination == (CALLER[0], 5090)
    assert out.data.startswith(b"SIP/2.0 400 Malformed parameter\r\n")
    assert gateway.counters.rejected == {400: 1} and gateway.counters.malformed_requests == 1
    assert len(gateway.table) == 0


def test_an_ack_whose_via_is_broken_gets_no_answer() -> None:
    data = request("ACK", to_tag="t").replace(b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcaller1", BAD_VIA_PARAMS)
    gateway = make_gateway()
    assert send(gateway, data) == []
    assert gateway.counters.malformed_requests == 1 and gateway.counters.rejected == {}


@pytest.mark.parametrize(
    ("via", "destination"),
    [
        ("SIP/7.0/UDP 192.0.2.10:5090;;,;,,", (CALLER[0], 5090)),
        ("SIP/7.0/UDP 192.0.2.10", (CALLER[0], 5060)),
        ("SIP/7.0/UDP 192.0.2.10:1", (CALLER[0], 1)),
        ("SIP/7.0/UDP 192.0.2.10:65535", (CALLER[0], 65535)),
        ("SIP/7.0/UDP 192.0.2.10:5091, SIP/2.0/UDP 192.0.2.99:5092", (CALLER[0], 5091)),
        ("SIP/7.0/UDP 192.0.2.10:5091, SIP/7.0/UDP 192.0.2.99:5092, SIP/7.0/UDP h:5093", (CALLER[0], 5091)),
        ("SIP/7.0/UDP 192.0.2.10:0", None),
        ("SIP/7.0/UDP 192.0.2.10:65536", None),
        ("nonsense", None),
    ],
)
def test_an_unparseable_request_is_answered_at_its_top_via_port_when_it_has_one(
    via: str, destination: tuple[str, int] | None
) -> None:
    """RFC 4475 §3.1.2.1 and §3.1.2.16: a Via broken past parsing still gives its sent-by."""
    data = request("INVITE", via_host="x").replace(b"Via: SIP/2.0/UDP x;branch=z9hG4bKcaller1", f"Via: {via}".encode())
    data = data.replace(b"Call-ID:", b"Call-ID", 1)  # and the message does not parse
    gateway = make_gateway()
    outputs = send(gateway, data)
    assert gateway.counters.malformed_requests == 1
    if destination is None:
        assert outputs == [] and gateway.counters.rejected == {}
    else:
        assert only(outputs).destination == destination
        assert gateway.counters.rejected == {400: 1}


def test_the_answer_to_an_unparseable_request_copies_its_identity_headers_and_names_the_fault() -> None:
    """Folded lines are unfolded, compact forms recognised, unknown headers left out."""
    lines = [
        "INVITE sip:bob@192.0.2.1 SIP/2.0",
        "v: SIP/2.0/UDP 192.0.2.10:5070",
        " ;branch=z9hG4bKfolded",
        "Via: SIP/2.0/UDP 192.0.2.99:5099;branch=z9hG4bKsecond",
        "f: <sip:alice@example.org>;tag=a",
        "To:\t<sip:bob@example.org>",
        "i: broken-1",
        "CSeq: 1 INVITE",
        "X-Other: dropped",
        "Broken line without a colon",
        "Subject: dropped too",
        "",
        "",
    ]
    gateway = make_gateway()
    out = only(send(gateway, "\r\n".join(lines).encode() + b"body\r\n\r\nmore"))
    assert out.destination == CALLER
    reply = out.data.decode()
    assert reply == "\r\n".join([
        "SIP/2.0 400 Malformed header line",
        "v: SIP/2.0/UDP 192.0.2.10:5070 ;branch=z9hG4bKfolded",
        "Via: SIP/2.0/UDP 192.0.2.99:5099;branch=z9hG4bKsecond",
        "f: <sip:alice@example.org>;tag=a",
        "To:\t<sip:bob@example.org>",
        "i: broken-1",
        "CSeq: 1 INVITE",
        "Server: sipshadow",
        "Content-Length: 0",
        "",
        "",
    ])  # fmt: skip


def test_a_folded_tab_continuation_is_unfolded_in_the_answer() -> None:
    lines = ["INVITE sip:bob@192.0.2.1 SIP/2.0", "Via: SIP/2.0/UDP 192.0.2.10:5070", "\t;branch=z9hG4bKtab",
             "Call-ID broken", "", ""]  # fmt: skip
    out = only(send(make_gateway(), "\r\n".join(lines).encode()))
    assert b"Via: SIP/2.0/UDP 192.0.2.10:5070 ;branch=z9hG4bKtab\r\n" in out.data


def test_unparseable_datagrams_are_counted_one_each_as_requests_or_responses() -> None:
    gateway = make_gateway()
    for data in (b"SIP/2.0 2000 Bad\r\n\r\n", b"sip/2.0 200 OK\r\nVia broken\r\n\r\n"):
        assert send(gateway, data, MEMBERS[0]) == []
    for data in (b"junk\r\n\r\n", b"OPTIONS sip:x SIP/2.0\r\nno colon\r\n\r\n"):
        assert send(gateway, data) == []
    counters = gateway.counters
    assert (counters.malformed_responses, counters.malformed_requests) == (2, 2)
    answerable = request("INVITE").replace(b"Call-ID:", b"Call-ID", 1)
    send(gateway, answerable)
    send(gateway, answerable)
    assert (counters.malformed_responses, counters.malformed_requests, counters.rejected) == (2, 4, {400: 2})


def test_a_response_to_a_request_never_seen_gets_no_answer_even_if_it_looks_like_a_request() -> None:
    """A datagram starting `SIP/` is a response, whatever its case: never answered."""
    data = b"SiP/2.0 999 X\r\nVia: SIP/2.0/UDP 192.0.2.10:5070\r\n\r\n"
    gateway = make_gateway()
    assert send(gateway, data, MEMBERS[0]) == []
    assert gateway.counters.malformed_responses == 1


# -- counters count one per event -------------------------------------------------------------


def test_responses_with_no_next_hop_or_ourselves_as_next_hop_count_one_each() -> None:
    gateway = make_gateway()
    forwarded = start_call(gateway)
    ours_only = b"\r\n".join(
        line for line in response_to(forwarded.data, 180, "R").split(b"\r\n") if b"z9hG4bKcall-1" not in line
    )
    loop = response_to(forwarded.data, 180, "R").replace(b"192.0.2.10:5070;", b"192.0.2.1:5060;")
    for _ in range(2):
        assert send(gateway, ours_only, MEMBERS[0]) == []
        assert send(gateway, loop, MEMBERS[0]) == []
    assert (gateway.counters.stray_responses, gateway.counters.response_loops) == (2, 2)


def test_each_reaped_call_counts_once() -> None:
    gateway = make_gateway(early_timeout_s=10.0, confirmed_timeout_s=100.0)
    for call_id in ("a", "b", "c"):
        answer(gateway, start_call(gateway, call_id), 200)
    start_call(gateway, "d")
    start_call(gateway, "e")
    gateway.handle(TimerExpired(500.0))
    assert (gateway.counters.dialogs_reaped_confirmed, gateway.counters.dialogs_reaped_early) == (3, 2)


# -- CANCEL and NOTIFY matching -----------------------------------------------------------------


def test_a_cancel_from_the_caller_within_a_dialog_goes_to_the_member() -> None:
    """A re-INVITE's CANCEL (with the To tag) from the caller's side follows the dialog (§9.1)."""
    gateway = make_gateway()
    start_call(gateway, "other")  # member 0
    answer(gateway, start_call(gateway), 200)  # member 1
    cancel = request("CANCEL", to_tag="callee-tag", cseq=2, branch="z9hG4bKreinvite")
    assert only(send(gateway, cancel)).destination == MEMBERS[1]


def test_a_cancel_without_a_from_tag_finds_an_invite_without_one() -> None:
    """An RFC 2543 caller sends no From tag: its CANCEL still matches its INVITE."""
    gateway = make_gateway()
    start_call(gateway, "other")  # member 0
    untagged = b"From: <sip:alice@example.org>"
    invite = request("INVITE").replace(b'From: "Alice" <sip:alice@example.org>;tag=caller-tag', untagged)
    assert only(send(gateway, invite)).destination == MEMBERS[1]
    cancel = request("CANCEL").replace(b'From: "Alice" <sip:alice@example.org>;tag=caller-tag', untagged)
    assert only(send(gateway, cancel)).destination == MEMBERS[1]


def test_a_cancel_that_matches_nothing_gets_481_with_its_reason() -> None:
    out = only(send(make_gateway(), request("CANCEL")))
    assert out.data.startswith(b"SIP/2.0 481 Call/Transaction Does Not Exist\r\n")


def test_an_in_dialog_request_that_matches_nothing_gets_481_with_its_reason() -> None:
    out = only(send(make_gateway(), request("BYE", to_tag="nobody", cseq=2)))
    assert out.data.startswith(b"SIP/2.0 481 Call/Transaction Does Not Exist\r\n")


def subscribe_then_notify(gateway: Gateway, notify: bytes) -> list:
    only(send(gateway, request("SUBSCRIBE", call_id="sub", branch="z9hG4bKsub")))
    return send(gateway, notify, MEMBERS[0], 1.0)


def notify(**options: object) -> bytes:
    defaults: dict[str, object] = {"call_id": "sub", "from_tag": "notifier", "to_tag": "caller-tag",
                                   "via_host": "192.0.2.21:5080", "branch": "z9hG4bKn1",
                                   "extra": ("Subscription-State: active",)}  # fmt: skip
    defaults.update(options)
    return request("NOTIFY", **defaults)  # type: ignore[arg-type]


def test_a_notify_before_the_2xx_makes_a_confirmed_subscription_dialog() -> None:
    gateway = make_gateway(confirmed_timeout_s=100.0)
    assert only(subscribe_then_notify(gateway, notify())).destination == CALLER
    call = gateway.table.get("sub")
    assert call is not None
    dialog = call.dialogs[("caller-tag", "notifier")]
    attempt = next(iter(call.attempts.values()))
    assert (dialog.state, dialog.usage, dialog.branch, dialog.expires_at) == (
        DialogState.CONFIRMED, "SUBSCRIBE", attempt.branch, 101.0)  # fmt: skip
    gateway.handle(TimerExpired(50.0))
    assert only(send(gateway, request("SUBSCRIBE", call_id="sub", to_tag="notifier", cseq=2), now=60.0))


def test_a_notify_without_a_from_tag_establishes_nothing() -> None:
    untagged = notify().replace(b'From: "Alice" <sip:alice@example.org>;tag=notifier', b"From: <sip:n@example.org>")
    gateway = make_gateway()
    out = only(subscribe_then_notify(gateway, untagged))
    assert status_of(out) == 481
    call = gateway.table.get("sub")
    assert call is not None and call.dialogs == {}


def test_a_notify_naming_an_invites_tag_does_not_make_a_dialog_of_the_call() -> None:
    gateway = make_gateway()
    start_call(gateway)  # an INVITE whose From tag is caller-tag
    out = only(send(gateway, notify(call_id="call-1@caller"), MEMBERS[0]))
    assert status_of(out) == 481


# -- Timer C and BYE on a dialog we are off the path of -----------------------------------------


def test_a_provisional_without_a_to_tag_restarts_timer_c() -> None:
    """§16.7 item 2: any 101-199 restarts Timer C, even one that makes no early dialog."""
    gateway = make_gateway(early_timeout_s=100.0)
    forwarded = start_call(gateway)
    only(send(gateway, response_to(forwarded.data, 180, "R", to_tag=None), MEMBERS[0], 90.0))
    gateway.handle(TimerExpired(150.0))
    assert gateway.counters.dialogs_reaped_early == 0
    assert only(send(gateway, request("CANCEL"), now=150.0)).destination == MEMBERS[0]
    gateway.handle(TimerExpired(190.0))
    assert gateway.counters.dialogs_reaped_early == 1


def test_a_bye_through_us_for_a_dialog_we_are_off_the_path_of_lingers_from_the_bye() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    forwarded = start_call(gateway)
    data = response_to(forwarded.data, 200, "OK", to_tag="callee-tag")
    data = b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Record-Route"))
    send(gateway, data, MEMBERS[0])  # off path: lingers until 32
    only(send(gateway, request("BYE", to_tag="callee-tag", cseq=2), now=20.0))
    call = gateway.table.get("call-1@caller")
    assert call is not None and call.dialogs[("caller-tag", "callee-tag")].state is DialogState.TERMINATED
    gateway.handle(TimerExpired(40.0))
    assert only(send(gateway, request("BYE", to_tag="callee-tag", cseq=2), now=40.0)).destination == MEMBERS[0]
    gateway.handle(TimerExpired(52.0))
    assert len(gateway.table) == 0


# -- weighted random: the draw maps onto the weights --------------------------------------------


def weighted(draws: list[float], members: int = 3) -> list[int]:
    addresses = [("192.0.2.21", 5080 + index) for index in range(members)]
    specs = tuple(MemberSpec(address, weight) for address, weight in zip(addresses, (1, 3, 4), strict=False))
    config = GatewayConfig(service=ALG, members=specs, policy="weighted-random", probe_interval_s=0.0)
    gateway = Gateway(config, FixedEntropy(draws))
    chosen = []
    for index in range(len(draws)):
        out = only(gateway.handle(MessageReceived(request("INVITE", call_id=f"w{index}"), CALLER, 0.0)))
        chosen.append(addresses.index(out.destination))
    return chosen


def test_weighted_random_maps_each_draw_onto_the_members_share_of_the_weights() -> None:
    """Weights 1, 3, 4: draws in [0, 1/8) take member 0, [1/8, 1/2) member 1, [1/2, 1) member 2."""
    assert weighted([0.0, 0.124, 0.125, 0.49, 0.5, 0.999]) == [0, 0, 1, 1, 2, 2]


def test_weighted_random_never_fails_on_a_draw_at_the_very_top() -> None:
    """A draw that rounding (or a bad log) puts at 1.0 still picks a member: the last."""
    assert weighted([1.0]) == [2]


# -- subscriptions end only on a final NOTIFY ----------------------------------------------------


def subscribed(gateway: Gateway) -> None:
    subscribe = only(send(gateway, request("SUBSCRIBE", call_id="sub", branch="z9hG4bKsub")))
    assert send(gateway, response_to(subscribe.data, 200, "OK", to_tag="notifier"), MEMBERS[0])


def subscription_state(gateway: Gateway) -> DialogState:
    call = gateway.table.get("sub")
    assert call is not None
    return call.dialogs[("caller-tag", "notifier")].state


@pytest.mark.parametrize(
    ("value", "ends"),
    [
        ("active;expires=3600", False),
        ("pending", False),
        ("terminated", True),
        ("Terminated ;reason=noresource", True),
        ("terminated;reason=timeout;retry-after=5", True),
    ],
)
def test_only_a_notify_saying_terminated_ends_a_subscription(value: str, ends: bool) -> None:
    """RFC 6665 §4.1.2.3: the Subscription-State value before its parameters decides."""
    gateway = make_gateway()
    subscribed(gateway)
    assert send(gateway, notify(extra=(f"Subscription-State: {value}",)), MEMBERS[0])
    assert (subscription_state(gateway) is DialogState.TERMINATED) is ends


@pytest.mark.parametrize("method", ["SUBSCRIBE", "INFO", "MESSAGE", "BYE"])
def test_no_other_request_ends_a_subscription(method: str) -> None:
    """A BYE ends a call's dialog, not a subscription's (RFC 6665 §4.4.1)."""
    gateway = make_gateway()
    subscribed(gateway)
    assert only(send(gateway, request(method, call_id="sub", to_tag="notifier", cseq=2)))
    assert subscription_state(gateway) is DialogState.CONFIRMED


# -- requests within an early dialog and out of any dialog ------------------------------------


def test_a_request_in_an_early_dialog_that_left_the_path_brings_it_back() -> None:
    """A fork's 2xx takes the other early dialogs off the path; a request of one puts it back."""
    gateway = make_gateway()
    invite = start_call(gateway)
    for tag, status in (("a", 180), ("b", 180), ("b", 200)):
        send(gateway, response_to(invite.data, status, "X", to_tag=tag), MEMBERS[0])
    call = gateway.table.get("call-1@caller")
    assert call is not None and not call.dialogs[("caller-tag", "a")].on_path
    assert only(send(gateway, request("UPDATE", to_tag="a", cseq=2))).destination == MEMBERS[0]
    assert call.dialogs[("caller-tag", "a")].on_path
    assert call.dialogs[("caller-tag", "a")].state is DialogState.EARLY


def test_an_out_of_dialog_request_of_a_known_call_id_goes_to_its_member() -> None:
    from sipshadow.core.policies import stable_hash

    gateway = make_gateway()
    start_call(gateway, "first")  # member 0
    call_id = next(f"c{index}" for index in range(100) if stable_hash(f"c{index}") % 2 == 0)
    start_call(gateway, call_id)  # member 1, though its hash names member 0
    assert only(send(gateway, request("MESSAGE", call_id=call_id, cseq=5))).destination == MEMBERS[1]
    assert only(send(gateway, request("MESSAGE", call_id=call_id + "x", cseq=5))).destination in MEMBERS


def test_acks_of_unknown_calls_are_dropped_and_counted_one_each() -> None:
    gateway = make_gateway()
    for call_id in ("x", "y"):
        assert send(gateway, request("ACK", call_id=call_id)) == []
        assert send(gateway, request("ACK", call_id=call_id, to_tag="t")) == []
    assert gateway.counters.unroutable_acks == 4
    assert gateway.counters.rejected == {}


# -- timers: what counts as reaped, and probe rounds -------------------------------------------


def test_a_call_ended_by_bye_is_not_counted_as_reaped_when_its_linger_ends() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    answer(gateway, start_call(gateway), 200)
    send(gateway, request("BYE", to_tag="callee-tag", cseq=2), now=1.0)
    rejected = start_call(gateway, "rejected")
    answer(gateway, rejected, 486)
    gateway.handle(TimerExpired(100.0))
    assert len(gateway.table) == 0
    assert (gateway.counters.dialogs_reaped_confirmed, gateway.counters.dialogs_reaped_early) == (0, 0)


def test_members_going_down_in_different_rounds_count_one_event_each() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    probes = probe_round(gateway, 0.0)
    reply_to_probe(gateway, probes[MEMBERS[0]], MEMBERS[0], 0.5)
    probes = probe_round(gateway, 1.0)  # member 1 down
    assert gateway.counters.member_down_events == 1
    probe_round(gateway, 2.0)  # member 0 down
    assert gateway.counters.member_down_events == 2
    probe_round(gateway, 3.0)  # nobody left to go down
    assert gateway.counters.member_down_events == 2


def test_each_probe_round_has_its_own_sequence_in_branch_and_cseq() -> None:
    gateway = make_gateway(probe_interval_s=1.0)
    for round_number, now in enumerate((0.0, 1.0, 2.0), start=1):
        message = parse_message(probe_round(gateway, now)[MEMBERS[0]])
        assert message.cseq == (round_number, "OPTIONS")
        branch = message.top_via.branch if message.top_via is not None else None
        assert re.fullmatch(rf"z9hG4bKssp\.0\.{round_number}\.[0-9a-f]{{20}}", branch or ""), branch


def test_a_timer_before_the_round_is_due_sends_no_probe() -> None:
    gateway = make_gateway(probe_interval_s=1.0)
    probe_round(gateway, 0.0)
    assert gateway.handle(TimerExpired(0.999)) == []
    assert len(gateway.handle(TimerExpired(1.0))) == 2


def test_round_robin_takes_three_members_in_turn() -> None:
    addresses = tuple(("192.0.2.21", 5080 + index) for index in range(3))
    config = GatewayConfig(service=ALG, members=tuple(MemberSpec(a) for a in addresses), probe_interval_s=0.0)
    gateway = Gateway(config, FixedEntropy([]))
    order = [addresses.index(start_call(gateway, f"rr{index}").destination) for index in range(7)]
    assert order == [0, 1, 2, 0, 1, 2, 0]


# -- the ALG's own To tags -----------------------------------------------------------------------


def test_the_algs_own_answers_tag_the_to_header_by_the_request_it_answers() -> None:
    """§8.2.6.2: a tag of our own, the same for a retransmission, another for another request."""
    gateway = make_gateway()

    def tag_of_481(call_id: str) -> str | None:
        return parse_message(only(send(gateway, request("CANCEL", call_id=call_id))).data).to_tag

    first, again, other = tag_of_481("a"), tag_of_481("a"), tag_of_481("b")
    assert first is not None and other is not None
    assert first == again != other
    assert first.startswith("ss") and len(first) == 14 and int(first[2:], 16) >= 0


IPV6_BUG = (
    "BUG (found by mutation testing): Gateway.sent_by puts an IPv6 service address into Via, Record-Route and the "
    "probes' From without brackets, so every response to a forwarded request is dropped as malformed "
    "(runtime.config accepts an IPv6 advertise address)"
)


def test_an_ipv6_service_address_is_bracketed_in_via_and_record_route() -> None:
    config = GatewayConfig(service=("2001:db8::1", 5060), members=(MemberSpec(MEMBERS[0]),), probe_interval_s=0.0)
    gateway = Gateway(config, FixedEntropy([]))
    forwarded = only(send(gateway, request("INVITE")))
    message = parse_message(forwarded.data)
    assert message.values("record-route") == ["<sip:[2001:db8::1]:5060;lr>"]
    assert message.top_via is not None and message.top_via.host == "[2001:db8::1]"
    assert only(send(gateway, response_to(forwarded.data, 180, "R"), MEMBERS[0])).destination == CALLER


# -- keep-alives, and each datagram counted once -------------------------------------------------


@pytest.mark.parametrize(
    ("data", "keepalive"),
    [
        (b"\r\n\r\n", True),
        (b"\r\n", True),
        (b"\x00\x00", True),
        (b" ", True),
        (b"\r\n\r\n ", False),
        (b"\r\n\r\n\r\n", False),
        (b"XX", False),
        (b"x", False),
    ],
)
def test_only_a_short_run_of_crlf_nul_or_space_is_a_keepalive(data: bytes, keepalive: bool) -> None:
    """RFC 5626 §3.5.1: a CRLF (or CRLFCRLF) keep-alive is taken silently; anything else is input."""
    gateway = make_gateway()
    assert send(gateway, data) == []
    assert send(gateway, data) == []
    counters = gateway.counters
    assert (counters.keepalives, counters.malformed_requests) == ((2, 0) if keepalive else (0, 2))


def test_requests_and_malformed_messages_count_one_each() -> None:
    gateway = make_gateway()
    forwarded = start_call(gateway)
    bad_cseq = response_to(forwarded.data, 180, "R").replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE")
    bad_request = request("INVITE", call_id="bad").replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    for _ in range(2):
        assert send(gateway, bad_cseq, MEMBERS[0]) == []
        assert status_of(only(send(gateway, bad_request))) == 400
    counters = gateway.counters
    assert (counters.requests, counters.malformed_requests, counters.malformed_responses) == (3, 2, 2)


def test_responses_without_our_via_and_probe_answers_that_name_nothing_count_one_each() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    probes = probe_round(gateway, 0.0)
    for _ in range(2):
        send(gateway, response_to(request("INVITE"), 200, "OK"), MEMBERS[0])
    assert gateway.counters.stray_responses == 2
    forged = re.sub(rb"branch=z9hG4bKssp\.0\.1\.", b"branch=z9hG4bKssp.0.x.", probes[MEMBERS[0]])
    for _ in range(2):
        send(gateway, response_to(forged, 200, "OK", to_tag="m"), MEMBERS[0], 0.5)
    assert (gateway.counters.forged_responses, gateway.counters.stray_probe_answers) == (2, 0)
    for _ in range(3):  # the first answers the probe, the next two are late duplicates
        send(gateway, response_to(probes[MEMBERS[0]], 200, "OK", to_tag="m"), MEMBERS[0], 0.6)
    assert gateway.counters.stray_probe_answers == 2


# -- what the ALG answers itself, and what it leaves to the members -------------------------------


def test_the_algs_answer_to_options_lists_what_it_allows() -> None:
    reply = parse_message(only(send(make_gateway(), request("OPTIONS", uri="sip:192.0.2.1:5060"))).data)
    assert reply.first("allow") == (
        "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"
    )


def test_a_request_other_than_options_addressed_to_the_alg_goes_to_a_member() -> None:
    gateway = make_gateway()
    assert only(send(gateway, request("INVITE", uri="sip:192.0.2.1:5060"))).destination == MEMBERS[0]
    assert only(send(gateway, request("MESSAGE", uri="sip:192.0.2.1", call_id="m"))).destination in MEMBERS


def test_an_ack_out_of_hops_is_dropped_not_answered() -> None:
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 486)
    assert send(gateway, request("ACK", to_tag="callee-tag", max_forwards="0")) == []
    assert gateway.counters.rejected == {}


def test_proxy_require_is_not_checked_on_ack_and_cancel() -> None:
    """§16.3 item 5: a CANCEL or ACK is never refused for an extension the proxy lacks."""
    gateway = make_gateway()
    forwarded = start_call(gateway)
    cancel = request("CANCEL", extra=("Proxy-Require: foo",))
    assert only(send(gateway, cancel)).destination == MEMBERS[0]
    send(gateway, response_to(forwarded.data, 487, "Terminated"), MEMBERS[0])
    ack = request("ACK", to_tag="callee-tag", extra=("Proxy-Require: foo",))
    assert only(send(gateway, ack)).destination == MEMBERS[0]
    assert gateway.counters.rejected == {}


def test_an_unknown_policy_is_refused_naming_the_known_ones() -> None:
    from sipshadow.core.config import POLICIES
    from sipshadow.core.policies import make_policy

    with pytest.raises(ValueError, match="^unknown policy 'fastest'; expected one of " + ", ".join(POLICIES) + "$"):
        make_policy("fastest", (), FixedEntropy([]))
