"""Dialogs as RFC 3261 defines them, driven through the core with no I/O.

One Call-ID may carry several dialogs (forks), early dialogs ring for minutes, CANCEL goes
where its request went, SUBSCRIBE and REFER open dialogs, and only a request that passes
validation and matches a dialog by tags changes any state.
"""

from __future__ import annotations

from sipshadow.core import Gateway, SendMessage, TimerExpired
from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.test_gateway import answer, make_gateway, only, send, start_call, status_of

ROUTE_ALG = f"Route: <sip:{ALG[0]}:{ALG[1]};lr>"


def member_request(
    method: str, *, to_tag: str = "caller-tag", from_tag: str = "callee-tag", **options: object
) -> bytes:
    """A request from the callee side (member 0) back towards the caller, through the ALG."""
    defaults: dict[str, object] = {
        "via_host": f"{MEMBERS[0][0]}:{MEMBERS[0][1]}",
        "branch": f"z9hG4bKm{method}",
        "extra": (ROUTE_ALG,),
        "uri": f"sip:alice@{CALLER[0]}:{CALLER[1]}",
    }
    defaults.update(options)
    return request(method, to_tag=to_tag, from_tag=from_tag, **defaults)  # type: ignore[arg-type]


def reply(gateway: Gateway, forwarded: SendMessage, status: int, tag: str | None, now: float = 0.0) -> SendMessage:
    return only(send(gateway, response_to(forwarded.data, status, "X", to_tag=tag), forwarded.destination, now))


# -- kind 1: dialog identity is Call-ID + From tag + To tag -------------------------------


def test_forked_answers_make_two_dialogs_and_each_bye_ends_only_its_own() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    for tag in ("t1", "t2", "t3"):
        reply(gateway, invite, 180, tag)
    for tag in ("fa", "fb"):
        reply(gateway, invite, 200, tag)
        assert only(send(gateway, request("ACK", to_tag=tag))).destination == MEMBERS[0]
    assert only(send(gateway, request("BYE", to_tag="fb", cseq=2), now=1.0)).destination == MEMBERS[0]
    assert gateway.table.active_per_member == [1, 0]
    gateway.handle(TimerExpired(34.0))
    bye = only(send(gateway, request("BYE", to_tag="fa", cseq=2, branch="z9hG4bKbye-fa"), now=35.0))
    assert bye.destination == MEMBERS[0]
    assert gateway.table.active_per_member == [0, 0]


def test_upstream_fork_non_2xx_on_one_branch_never_ends_the_other() -> None:
    gateway = make_gateway()
    first = start_call(gateway)
    second = only(send(gateway, request("INVITE", branch="z9hG4bKsecond-branch")))
    assert first.destination == second.destination  # one Call-ID, one member
    reply(gateway, first, 180, "a")
    reply(gateway, second, 180, "b")
    reply(gateway, first, 486, "a")
    assert gateway.table.active_per_member == [1, 0]
    reply(gateway, second, 200, "b")
    assert only(send(gateway, request("BYE", to_tag="b", cseq=2))).destination == MEMBERS[0]
    assert gateway.table.active_per_member == [0, 0]
    assert gateway.counters.calls == 1


def test_a_2xx_establishes_its_dialog_even_after_the_attempt_ended() -> None:
    gateway = make_gateway()
    invite = start_call(gateway)
    reply(gateway, invite, 200, "fa")
    reply(gateway, invite, 200, "late")  # a forking member's second 2xx
    assert only(send(gateway, request("BYE", to_tag="late", cseq=2))).destination == MEMBERS[0]


# -- kind 2: early dialogs that ring for minutes -------------------------------------------


def test_a_call_ringing_185_s_keeps_its_route_because_provisionals_refresh_timer_c() -> None:
    gateway = make_gateway()
    assert gateway.config.early_timeout_s > 180  # RFC 3261 §16.6 item 11: Timer C > 3 min
    invite = start_call(gateway)
    for now in (0.0, 60.0, 120.0, 175.0):
        gateway.handle(TimerExpired(now))
        reply(gateway, invite, 180, "ring", now)
    gateway.handle(TimerExpired(185.0))
    reply(gateway, invite, 200, "ring", 185.0)
    assert only(send(gateway, request("ACK", to_tag="ring"), now=185.1)).destination == MEMBERS[0]
    gateway.handle(TimerExpired(400.0))
    assert only(send(gateway, request("BYE", to_tag="ring", cseq=2), now=400.0)).destination == MEMBERS[0]


def test_an_invite_nobody_answers_is_reaped_at_timer_c() -> None:
    gateway = make_gateway(early_timeout_s=200.0)
    start_call(gateway)
    gateway.handle(TimerExpired(199.0))
    assert gateway.table.active_per_member == [1, 0]
    gateway.handle(TimerExpired(200.0))
    assert len(gateway.table) == 0 and gateway.counters.dialogs_reaped_early == 1


# -- kind 3: routing, CANCEL in either direction, strict routers ----------------------------


def test_member_cancels_its_own_reinvite_and_the_cancel_reaches_the_caller() -> None:
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 200)
    reinvite = only(send(gateway, member_request("INVITE", cseq=7), MEMBERS[0]))
    assert reinvite.destination == CALLER
    cancel = only(send(gateway, member_request("CANCEL", cseq=7, branch="z9hG4bKmINVITE"), MEMBERS[0]))
    assert cancel.destination == CALLER
    assert parse_message(cancel.data).top_via.branch == parse_message(reinvite.data).top_via.branch


def test_cancel_of_an_unknown_transaction_gets_481_and_changes_nothing() -> None:
    gateway = make_gateway()
    start_call(gateway)
    for cancel in (request("CANCEL", cseq=9), request("CANCEL", from_tag="stranger"), request("CANCEL", call_id="x")):
        assert status_of(only(send(gateway, cancel))) == 481
    assert gateway.table.active_per_member == [1, 0]


def test_strict_routing_previous_hop_gets_its_request_uri_back_from_the_last_route() -> None:
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 200)
    strict = request(
        "BYE", to_tag="callee-tag", cseq=2, uri=f"sip:{ALG[0]}:{ALG[1]};lr",
        extra=("Route: <sip:proxy.example.org;lr>, <sip:bob@192.0.2.21:5080>",),
    )  # fmt: skip
    forwarded = parse_message(only(send(gateway, strict)).data)
    assert forwarded.uri == "sip:bob@192.0.2.21:5080"
    assert forwarded.values("route") == ["<sip:proxy.example.org;lr>"]


def test_our_own_loose_route_is_taken_off_and_the_rest_kept() -> None:
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 200)
    bye = request("BYE", to_tag="callee-tag", cseq=2, extra=(f"{ROUTE_ALG}, <sip:next.example.org;lr>",))
    assert parse_message(only(send(gateway, bye)).data).values("route") == ["<sip:next.example.org;lr>"]


# -- kind 4: which requests open dialogs, and what goes out of dialog ----------------------


def test_subscribe_opens_a_record_routed_dialog_and_its_refresh_and_notifies_follow_it() -> None:
    gateway = make_gateway()
    subscribe = only(send(gateway, request("SUBSCRIBE", extra=("Event: presence", "Expires: 3600"))))
    assert parse_message(subscribe.data).values("record-route") == [f"<sip:{ALG[0]}:{ALG[1]};lr>"]
    reply(gateway, subscribe, 200, "notifier")
    refresh = request("SUBSCRIBE", to_tag="notifier", cseq=2, extra=(ROUTE_ALG, "Event: presence"))
    assert only(send(gateway, refresh)).destination == subscribe.destination
    notify = member_request("NOTIFY", from_tag="notifier", extra=(ROUTE_ALG, "Subscription-State: active"))
    assert only(send(gateway, notify, MEMBERS[0])).destination == CALLER
    assert gateway.counters.subscriptions == 1 and gateway.counters.calls == 0
    final = member_request("NOTIFY", from_tag="notifier", cseq=3, extra=("Subscription-State: terminated",))
    send(gateway, final, MEMBERS[0], now=1.0)
    gateway.handle(TimerExpired(40.0))
    assert len(gateway.table) == 0


def test_a_notify_before_the_2xx_of_its_subscribe_establishes_the_dialog() -> None:
    gateway = make_gateway()
    subscribe = only(send(gateway, request("REFER", extra=("Refer-To: <sip:carol@example.org>",))))
    notify = member_request("NOTIFY", from_tag="referee", extra=("Event: refer", "Subscription-State: active"))
    assert only(send(gateway, notify, MEMBERS[0])).destination == CALLER
    reply(gateway, subscribe, 202, "referee")
    assert only(send(gateway, request("BYE", to_tag="referee", cseq=2))).destination == subscribe.destination


def test_requests_without_a_to_tag_go_out_of_dialog_to_a_member() -> None:
    gateway = make_gateway()
    for method in ("REFER", "NOTIFY", "MESSAGE", "REGISTER", "PUBLISH"):
        out = only(send(gateway, request(method, call_id=f"ood-{method}")))
        assert out.destination in MEMBERS, method
    assert gateway.counters.rejected == {}


def test_an_in_dialog_request_for_a_call_id_never_seen_gets_481() -> None:
    gateway = make_gateway()
    for method in ("BYE", "SUBSCRIBE", "REFER", "NOTIFY", "INFO"):
        assert status_of(only(send(gateway, request(method, call_id="unknown", to_tag="t", cseq=2)))) == 481


# -- kind 8: member health from any response --------------------------------------------------


def test_members_that_answer_calls_but_not_options_stay_up() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=2)
    for second in range(10):
        now = float(second)
        gateway.handle(TimerExpired(now))  # probes nobody answers
        for index in range(2):
            invite = start_call(gateway, f"c{second}-{index}", now)
            reply(gateway, invite, 200, "t", now)
    assert all(member.up for member in gateway.health.members)
    assert gateway.counters.member_down_events == 0


def test_a_probe_answer_counts_only_from_its_member_and_for_the_probe_outstanding() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    probes = {probe.destination: probe for probe in gateway.handle(TimerExpired(0.0))}
    gateway.handle(TimerExpired(1.0))
    assert not gateway.health.members[1].up
    old = response_to(probes[MEMBERS[1]].data, 200, "OK", to_tag="m")
    send(gateway, old, ("203.0.113.66", 5060), 1.5)  # someone else's answer
    send(gateway, old, MEMBERS[0], 1.5)  # another member's address
    assert not gateway.health.members[1].up
    assert gateway.counters.forged_responses == 2  # the branch's MAC names member 1's address
    send(gateway, old, MEMBERS[1], 1.6)  # from the member: any response is proof of life
    assert gateway.health.members[1].up


def test_a_2xx_without_our_record_route_does_not_hold_the_call_active() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    data = response_to(invite.data, 200, "OK", to_tag="direct")
    data = b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Record-Route"))
    send(gateway, data, MEMBERS[0])
    assert gateway.table.active_per_member == [0, 0]
    gateway.handle(TimerExpired(40.0))
    assert len(gateway.table) == 0


def test_a_caller_that_routes_through_us_anyway_keeps_the_dialog() -> None:
    """SIPp's stock UAS drops Record-Route and its UAC sends ACK and BYE to us regardless."""
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    data = response_to(invite.data, 200, "OK", to_tag="direct")
    send(gateway, b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Record-Route")),
         MEMBERS[0])  # fmt: skip
    send(gateway, request("ACK", to_tag="direct"), now=0.1)
    assert gateway.table.active_per_member == [1, 0]
    gateway.handle(TimerExpired(100.0))
    assert only(send(gateway, request("BYE", to_tag="direct", cseq=2), now=100.0)).destination == MEMBERS[0]


# -- kind 10: state changes only for requests that pass, only for their own dialog ---------


def test_a_new_invite_with_a_malformed_route_gets_400_and_opens_nothing() -> None:
    gateway = make_gateway()
    out = only(send(gateway, request("INVITE", extra=("Route: <sip:@>",))))
    assert status_of(out) == 400
    assert len(gateway.table) == 0 and gateway.counters.calls == 0 and gateway.table.active_per_member == [0, 0]


def test_a_bad_bye_with_wrong_tags_never_ends_the_real_call() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    answer(gateway, start_call(gateway), 200)
    bad = request("BYE", from_tag="intruder", to_tag="nobody", cseq=2, extra=("Route: <sip:@>",))
    assert status_of(only(send(gateway, bad))) == 400
    for method in ("BYE", "INFO", "INVITE"):
        assert status_of(only(send(gateway, request(method, from_tag="intruder", to_tag="nobody", cseq=3)))) == 481
    assert send(gateway, request("ACK", from_tag="intruder", to_tag="nobody")) == []
    gateway.handle(TimerExpired(40.0))
    assert only(send(gateway, request("BYE", to_tag="callee-tag", cseq=2), now=40.0)).destination == MEMBERS[0]


def test_after_the_callee_holds_the_call_its_ack_and_bye_still_reach_the_caller() -> None:
    """A callee's re-INVITE (hold) and its 2xx make no new dialog: the callee's later requests
    go to the caller, and its BYE ends the call (found with baresip holding from the callee)."""
    gateway = make_gateway()
    invite = start_call(gateway)
    answer(gateway, invite, 200)
    reinvite = only(send(gateway, member_request("INVITE", cseq=5), MEMBERS[0]))
    assert reinvite.destination == CALLER
    ok = response_to(reinvite.data, 200, "OK", to_tag=None)  # the caller answers within the dialog
    assert only(send(gateway, ok, CALLER)).destination == MEMBERS[0]
    assert only(send(gateway, member_request("ACK", cseq=5), MEMBERS[0])).destination == CALLER
    assert only(send(gateway, member_request("BYE", cseq=6), MEMBERS[0])).destination == CALLER
    assert gateway.table.active_per_member == [0, 0]
    assert len(gateway.table.get("call-1@caller").dialogs) == 1


def test_a_callee_reinvite_rejected_leaves_the_dialog_as_it_was() -> None:
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 200)
    reinvite = only(send(gateway, member_request("INVITE", cseq=5), MEMBERS[0]))
    send(gateway, response_to(reinvite.data, 488, "Not Acceptable Here", to_tag=None), CALLER)
    assert only(send(gateway, member_request("ACK", cseq=5), MEMBERS[0])).destination == CALLER
    assert gateway.table.active_per_member == [1, 0]
    assert only(send(gateway, request("BYE", to_tag="callee-tag", cseq=2))).destination == MEMBERS[0]
