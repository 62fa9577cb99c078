"""Dialog state as responses and requests drive it through the gateway (RFC 3261 §12, §13.2.2.4,
§16.7, §17.1.1.3): the cases mutation testing found untested. Each test reads the table the way
a replica or an operator would (dialog state, expiry, whether it holds its member)."""

from __future__ import annotations

import pytest

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, SendMessage, TimerExpired
from sipshadow.core.dialogs import Dialog, DialogState
from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.test_gateway import FixedEntropy, answer, make_gateway, only, send, start_call, status_of


def reply(gateway: Gateway, invite: SendMessage, status: int, tag: str | None, now: float = 0.0,
          *, record_route: bool = True) -> list[SendMessage]:  # fmt: skip
    data = response_to(invite.data, status, "X", to_tag=tag)
    if not record_route:
        data = b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Record-Route"))
    return send(gateway, data, invite.destination, now)


def dialog(gateway: Gateway, tag: str, call_id: str = "call-1@caller", caller_tag: str = "caller-tag") -> Dialog:
    call = gateway.table.get(call_id)
    assert call is not None, call_id
    return call.dialogs[(caller_tag, tag)]


# -- forks: a 2xx on one branch, the others -----------------------------------------------------


def test_a_2xx_on_one_fork_takes_the_others_off_the_path_but_lets_them_answer_later() -> None:
    """§13.2.2.4: the other early dialogs stay (not terminated) for a 2xx of their own, but no
    longer hold the member; they linger from the first 2xx."""
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    reply(gateway, invite, 180, "a")
    reply(gateway, invite, 200, "b", now=1.0)
    assert dialog(gateway, "a").state is DialogState.EARLY
    assert dialog(gateway, "a").on_path is False
    assert dialog(gateway, "a").expires_at == 33.0
    gateway.handle(TimerExpired(10.0))
    reply(gateway, invite, 200, "a", now=10.0)  # the late 2xx of the other fork
    assert dialog(gateway, "a").state is DialogState.CONFIRMED
    assert only(send(gateway, request("ACK", to_tag="a"), now=10.0)).destination == MEMBERS[0]
    gateway.state_digest()  # every part of the table hashes


def test_when_the_answered_fork_ends_the_call_no_longer_holds_its_member() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    reply(gateway, invite, 180, "a")
    reply(gateway, invite, 180, "b")
    reply(gateway, invite, 200, "b")
    reply(gateway, invite, 180, "a")  # a retransmitted 180 does not bring it back on the path
    assert gateway.table.active_per_member == [1, 0]
    send(gateway, request("BYE", to_tag="b", cseq=2), now=1.0)
    assert gateway.table.active_per_member == [0, 0]


def test_a_non_2xx_final_without_a_to_tag_ends_the_early_dialogs_of_its_attempt() -> None:
    gateway = make_gateway()
    invite = start_call(gateway)
    reply(gateway, invite, 183, "a")
    assert gateway.table.active_per_member == [1, 0]
    reply(gateway, invite, 503, None)
    assert dialog(gateway, "a").state is DialogState.TERMINATED
    assert gateway.table.active_per_member == [0, 0]


# -- what each response does to the dialog ------------------------------------------------------


def test_a_late_provisional_never_reopens_a_confirmed_dialog_nor_a_terminated_one() -> None:
    gateway = make_gateway()
    invite = start_call(gateway)
    reply(gateway, invite, 200, "a")
    reply(gateway, invite, 180, "a")  # reordered on the way
    assert dialog(gateway, "a").state is DialogState.CONFIRMED
    send(gateway, request("BYE", to_tag="a", cseq=2))
    reply(gateway, invite, 200, "a")  # a 2xx retransmitted after the BYE
    assert dialog(gateway, "a").state is DialogState.TERMINATED


def test_a_repeated_provisional_keeps_an_early_dialog_ringing() -> None:
    gateway = make_gateway(early_timeout_s=200.0)
    invite = start_call(gateway)
    reply(gateway, invite, 180, "a", now=0.0)
    reply(gateway, invite, 180, "a", now=150.0)
    assert dialog(gateway, "a").expires_at == 350.0
    reply(gateway, invite, 180, "a", now=160.0)
    assert dialog(gateway, "a").expires_at == 360.0


def test_a_retransmitted_2xx_with_our_record_route_puts_an_off_path_dialog_back_on_the_path() -> None:
    gateway = make_gateway(terminated_linger_s=32.0, confirmed_timeout_s=100.0)
    invite = start_call(gateway)
    reply(gateway, invite, 200, "a", record_route=False)
    assert gateway.table.active_per_member == [0, 0]
    reply(gateway, invite, 200, "a", now=1.0)
    assert dialog(gateway, "a").on_path is True
    assert dialog(gateway, "a").expires_at == 101.0
    assert gateway.table.active_per_member == [1, 0]
    reply(gateway, invite, 200, "a", now=2.0, record_route=False)  # one without it changes nothing
    assert dialog(gateway, "a").on_path is True
    assert dialog(gateway, "a").expires_at == 101.0


def test_a_2xx_with_a_malformed_record_route_leaves_the_dialog_off_the_path() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    data = response_to(invite.data, 200, "OK", to_tag="a").replace(
        b"Record-Route: <sip:192.0.2.1:5060;lr>", b"Record-Route: <sip:192.0.2.1:5060;lr>, , <sip:x>"
    )
    send(gateway, data, MEMBERS[0])
    assert dialog(gateway, "a").state is DialogState.CONFIRMED and dialog(gateway, "a").on_path is False
    assert gateway.table.active_per_member == [0, 0]


def test_a_300_ends_the_attempt_like_any_non_2xx_final() -> None:
    gateway = make_gateway()
    invite = start_call(gateway)
    reply(gateway, invite, 300, "a", now=1.0)
    assert dialog(gateway, "a").state is DialogState.TERMINATED
    assert gateway.table.active_per_member == [0, 0]
    call = gateway.table.get("call-1@caller")
    assert call is not None and call.attempts == {}


def test_a_rejected_invite_lingers_for_its_ack_from_the_final_response() -> None:
    """§17.1.1.3: the ACK of a non-2xx final goes where the INVITE went, for 64*T1 after it."""
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    reply(gateway, invite, 486, "a", now=5.0)
    ended = dialog(gateway, "a")
    attempt_branch = parse_message(invite.data).top_via.branch  # type: ignore[union-attr]
    assert (ended.expires_at, ended.branch, ended.usage) == (37.0, attempt_branch, "INVITE")
    gateway.handle(TimerExpired(6.0))
    assert only(send(gateway, request("ACK", to_tag="a"), now=6.0)).destination == MEMBERS[0]
    gateway.handle(TimerExpired(37.0))
    assert len(gateway.table) == 0


def test_a_confirmed_dialog_remembers_the_attempt_that_made_it() -> None:
    gateway = make_gateway()
    invite = start_call(gateway)
    reply(gateway, invite, 200, "a")
    branch = parse_message(invite.data).top_via.branch  # type: ignore[union-attr]
    assert (dialog(gateway, "a").branch, dialog(gateway, "a").usage) == (branch, "INVITE")


def test_a_100_trying_neither_makes_a_dialog_nor_restarts_timer_c() -> None:
    """§16.7 item 2: only 101-199 restart Timer C."""
    gateway = make_gateway(early_timeout_s=200.0)
    invite = start_call(gateway)
    reply(gateway, invite, 100, "a", now=150.0)
    call = gateway.table.get("call-1@caller")
    assert call is not None and call.dialogs == {}
    gateway.handle(TimerExpired(200.0))
    assert gateway.counters.dialogs_reaped_early == 1 and len(gateway.table) == 0


def test_a_provisional_without_a_to_tag_makes_no_early_dialog() -> None:
    gateway = make_gateway(early_timeout_s=200.0)
    invite = start_call(gateway)
    reply(gateway, invite, 180, None, now=1.0)
    call = gateway.table.get("call-1@caller")
    assert call is not None and call.dialogs == {}
    assert next(iter(call.attempts.values())).expires_at == 201.0


def test_an_early_dialog_rings_for_timer_c_from_its_last_provisional() -> None:
    gateway = make_gateway(early_timeout_s=200.0)
    invite = start_call(gateway)
    reply(gateway, invite, 180, "a", now=10.0)
    assert dialog(gateway, "a").expires_at == 210.0
    gateway.handle(TimerExpired(100.0))
    assert dialog(gateway, "a").state is DialogState.EARLY


def test_a_provisional_to_a_subscribe_makes_no_early_dialog() -> None:
    """Only an INVITE has early dialogs (§12.1); a SUBSCRIBE's dialog starts at its 2xx or NOTIFY."""
    gateway = make_gateway()
    subscribe = only(send(gateway, request("SUBSCRIBE", call_id="sub")))
    send(gateway, response_to(subscribe.data, 183, "X", to_tag="n"), MEMBERS[0])
    call = gateway.table.get("sub")
    assert call is not None and call.dialogs == {}


def test_a_late_202_of_a_forked_subscribe_makes_its_own_dialog() -> None:
    gateway = make_gateway()
    subscribe = only(send(gateway, request("SUBSCRIBE", call_id="sub")))
    send(gateway, response_to(subscribe.data, 202, "Accepted", to_tag="n1"), MEMBERS[0])
    send(gateway, response_to(subscribe.data, 202, "Accepted", to_tag="n2"), MEMBERS[0])
    assert dialog(gateway, "n2", "sub").state is DialogState.CONFIRMED


def test_a_response_without_a_from_tag_keys_its_dialog_by_an_empty_caller_tag() -> None:
    gateway = make_gateway()
    untagged = b"From: <sip:alice@example.org>"
    invite = only(send(gateway, request("INVITE").replace(b'From: "Alice" <sip:alice@example.org>;tag=caller-tag',
                                                             untagged)))  # fmt: skip
    send(gateway, response_to(invite.data, 200, "OK", to_tag="a"), MEMBERS[0])
    assert dialog(gateway, "a", caller_tag="").state is DialogState.CONFIRMED


def test_each_attempt_remembers_where_its_request_came_from() -> None:
    """An upstream proxy that forks sends one Call-ID from two addresses: each early dialog's
    requests from the callee go back to the hop its attempt came from."""
    gateway = make_gateway()
    first = start_call(gateway)
    other_hop = ("192.0.2.77", 5090)
    second = only(send(gateway, request("INVITE", branch="z9hG4bKhop2", via_host="192.0.2.77:5090"), other_hop))
    reply(gateway, first, 180, "a")
    reply(gateway, second, 180, "b")
    for tag, hop in (("a", CALLER), ("b", other_hop)):
        bye = request("BYE", from_tag=tag, to_tag="caller-tag", cseq=9, via_host="192.0.2.21:5080",
                      branch=f"z9hG4bKm{tag}")  # fmt: skip
        assert only(send(gateway, bye, MEMBERS[0])).destination == hop


# -- counters of calls and subscriptions ---------------------------------------------------------


def test_calls_subscriptions_and_responses_are_counted_one_each() -> None:
    gateway = make_gateway()
    for index in range(3):
        answer(gateway, start_call(gateway, f"call{index}"), 200)
    for index in range(2):
        only(send(gateway, request("SUBSCRIBE", call_id=f"sub{index}")))
    counters = gateway.counters
    assert (counters.calls, counters.subscriptions, counters.responses) == (3, 2, 3)
    assert counters.calls_per_member == [2, 1]


def test_responses_missing_a_via_a_cseq_or_a_call_id_are_malformed_and_dropped() -> None:
    gateway = make_gateway()
    forwarded = start_call(gateway)
    good = response_to(forwarded.data, 180, "Ringing")
    for header in (b"Via:", b"CSeq:", b"Call-ID:"):
        stripped = b"\r\n".join(line for line in good.split(b"\r\n") if not line.startswith(header))
        assert send(gateway, stripped, MEMBERS[0]) == []
    assert gateway.counters.malformed_responses == 3
    assert gateway.counters.responses == 3


def test_new_calls_while_every_member_is_down_count_one_each() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    for now in (0.0, 1.0):
        gateway.handle(TimerExpired(now))
    start_call(gateway, "a")
    start_call(gateway, "b")
    assert gateway.counters.routed_all_down == 2


def test_a_member_that_comes_back_twice_counts_two_up_events() -> None:
    gateway = make_gateway(probe_interval_s=1.0, probe_misses=1)
    forwarded = start_call(gateway)  # member 0
    for now in (0.0, 1.0, 2.0):
        gateway.handle(TimerExpired(now))
        if now == 1.0:
            send(gateway, response_to(forwarded.data, 180, "R"), MEMBERS[0], 1.5)
    assert gateway.counters.member_up_events == 1
    gateway.handle(TimerExpired(3.0))
    send(gateway, response_to(forwarded.data, 180, "R"), MEMBERS[0], 3.5)
    assert gateway.counters.member_up_events == 2


# -- forwarding: Record-Route, Via and branches -------------------------------------------------


def test_our_record_route_goes_above_any_already_there_and_only_on_dialog_creating_requests() -> None:
    """§16.6 item 4: ours above the existing values; an in-dialog request gets none."""
    gateway = make_gateway()
    invite = request("INVITE", extra=("Record-Route: <sip:upstream.example.com;lr>",))
    invite = invite.replace(b"Record-Route: <sip:upstream.example.com;lr>\r\n", b"")
    invite = invite.replace(
        b"INVITE sip:bob@192.0.2.1:5060 SIP/2.0\r\n",
        b"INVITE sip:bob@192.0.2.1:5060 SIP/2.0\r\nRecord-Route: <sip:upstream.example.com;lr>\r\n",
    )
    forwarded = parse_message(only(send(gateway, invite)).data)
    assert forwarded.values("record-route") == ["<sip:192.0.2.1:5060;lr>", "<sip:upstream.example.com;lr>"]
    send(gateway, response_to(only(send(gateway, invite)).data, 200, "OK", to_tag="a"), MEMBERS[0])
    bye = parse_message(only(send(gateway, request("BYE", to_tag="a", cseq=2))).data)
    assert bye.values("record-route") == []


@pytest.mark.parametrize("method", ["INVITE", "BYE"])
def test_a_request_with_an_rfc_2543_branch_gets_a_stable_branch_of_ours(method: str) -> None:
    """§16.11: without the magic cookie the branch is derived from the request's identity, so a
    retransmission and the CANCEL of an INVITE take the same branch."""
    gateway = make_gateway()
    if method == "BYE":
        answer(gateway, start_call(gateway), 200)
    options = {"to_tag": "callee-tag", "cseq": 2} if method == "BYE" else {}
    old = request(method, branch="old-style-1", **options)  # type: ignore[arg-type]
    first = parse_message(only(send(gateway, old)).data).top_via
    again = parse_message(only(send(gateway, old)).data).top_via
    assert first is not None and again is not None
    assert first.branch == again.branch and first.branch is not None and first.branch.startswith("z9hG4bKss")
    if method == "INVITE":
        cancel = parse_message(only(send(gateway, request("CANCEL", branch="old-style-1"))).data).top_via
        assert cancel is not None and cancel.branch == first.branch


# -- requests and responses that name the ALG itself --------------------------------------------


def gateway_on(port: int) -> Gateway:
    config = GatewayConfig(service=(ALG[0], port), members=(MemberSpec(MEMBERS[0]),), probe_interval_s=0.0)
    return Gateway(config, FixedEntropy([]))


@pytest.mark.parametrize(
    ("port", "uri", "ours"),
    [
        (5060, "sip:192.0.2.1", True),
        (5060, "sips:192.0.2.1:5060", True),
        (5060, "sip:bob@192.0.2.1:5060", False),
        (5070, "sip:192.0.2.1:5070", True),
        (5070, "sip:192.0.2.1", False),
    ],
)
def test_options_is_answered_by_the_alg_only_when_addressed_to_it_with_no_user(port: int, uri: str, ours: bool) -> None:
    out = only(send(gateway_on(port), request("OPTIONS", uri=uri)))
    assert (out.destination != MEMBERS[0]) is ours
    if ours:
        assert status_of(out) == 200


def test_a_request_uri_naming_us_without_lr_is_no_strict_routing() -> None:
    """§16.4: only the Record-Route URI we hand out (with `lr`) is replaced from the last Route."""
    gateway = make_gateway()
    data = request("MESSAGE", uri="sip:192.0.2.1:5060", extra=("Route: <sip:next.example.com;lr>",))
    forwarded = parse_message(only(send(gateway, data)).data)
    assert forwarded.uri == "sip:192.0.2.1:5060"
    assert forwarded.values("route") == ["<sip:next.example.com;lr>"]


@pytest.mark.parametrize(("port", "top_via"), [(5070, "192.0.2.1:5070"), (5060, "192.0.2.1")])
def test_a_response_carrying_our_via_is_relayed_whatever_the_port_spelling(port: int, top_via: str) -> None:
    gateway = gateway_on(port)
    forwarded = only(send(gateway, request("INVITE")))
    ours = parse_message(forwarded.data).top_via
    assert ours is not None
    data = response_to(forwarded.data, 180, "R").replace(
        f"{ALG[0]}:{port};branch".encode(), f"{top_via};branch".encode()
    )
    assert only(send(gateway, data, MEMBERS[0])).destination == CALLER


def test_a_response_with_our_branch_under_someone_elses_via_is_stray() -> None:
    gateway = make_gateway()
    forwarded = start_call(gateway)
    data = response_to(forwarded.data, 180, "R").replace(
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;", b"Via: SIP/2.0/UDP 203.0.113.5:5060;"
    )
    assert send(gateway, data, MEMBERS[0]) == []
    assert gateway.counters.stray_responses == 1


def test_a_response_whose_next_hop_is_our_ipv6_alias_in_capitals_is_a_loop() -> None:
    alias = ("2001:db8::1", 5060)
    config = GatewayConfig(service=ALG, members=(MemberSpec(MEMBERS[0]),), probe_interval_s=0.0, aliases=(alias,))
    gateway = Gateway(config, FixedEntropy([]))
    looped = ("2001:DB8::1", 5060)  # a request that came from ourselves, our address in capitals
    forwarded = only(send(gateway, request("INVITE", via_host="[2001:DB8::1]:5060"), looped))
    assert send(gateway, response_to(forwarded.data, 180, "R"), MEMBERS[0]) == []
    assert gateway.counters.response_loops == 1


def test_an_answer_to_a_via_without_port_and_rport_goes_to_port_5060() -> None:
    out = only(send(make_gateway(), request("OPTIONS", uri="sip:192.0.2.1", via_host="192.0.2.10")))
    assert out.destination == (CALLER[0], 5060)


ON_PATH_BUG = (
    "BUG (found by mutation testing): an early dialog keeps on_path when its 2xx drops our Record-Route "
    "(DialogTable.put_dialog ORs the flags), so the call counts as active on its member though its requests "
    "bypass the ALG"
)


def test_a_2xx_without_our_record_route_takes_a_ringing_dialog_off_the_path() -> None:
    """The module's rule: a dialog holds its member while the ALG is on its path, i.e. its 2xx
    carried our Record-Route or a request of it came through us since. A tagged 180 first
    (SIPp's UAS sends one) must not change that."""
    gateway = make_gateway(terminated_linger_s=32.0)
    invite = start_call(gateway)
    reply(gateway, invite, 180, "a", record_route=False)
    reply(gateway, invite, 200, "a", now=1.0, record_route=False)
    assert dialog(gateway, "a").on_path is False
    assert gateway.table.active_per_member == [0, 0]


# -- received stamping (§18.2.1) and stateless branches (§16.11) --------------------------------


@pytest.mark.parametrize(
    ("via_host", "params", "source", "forwarded_via"),
    [
        ("10.0.0.5:5070", "", ("203.0.113.7", 5070),
         "SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKv;received=203.0.113.7"),
        ("192.0.2.10:5070", ";received=198.51.100.1", CALLER,
         "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKv;received=192.0.2.10"),
        ("[2001:db8::10]:5070", "", ("2001:db8::10", 5070), "SIP/2.0/UDP [2001:db8::10]:5070;branch=z9hG4bKv"),
        ("[2001:db8::10]:5070", "", ("2001:db8::11", 5070),
         "SIP/2.0/UDP [2001:db8::10]:5070;branch=z9hG4bKv;received=2001:db8::11"),
    ],
)  # fmt: skip
def test_the_senders_via_is_stamped_with_where_the_request_came_from_when_it_differs(
    via_host: str, params: str, source: tuple[str, int], forwarded_via: str
) -> None:
    data = request("INVITE", via_host=via_host, branch="z9hG4bKv" + params)
    forwarded = parse_message(only(send(make_gateway(), data, source)).data)
    assert forwarded.values("via")[1] == forwarded_via


def test_an_rfc_2543_caller_reusing_a_branch_gets_one_branch_per_request() -> None:
    """Without the magic cookie a branch says nothing: ours comes from the request's identity,
    CSeq number included, so two requests of one dialog never share a branch."""
    gateway = make_gateway()
    answer(gateway, start_call(gateway), 200)
    branches = set()
    for cseq, method in ((2, "INFO"), (3, "INFO"), (4, "BYE")):
        out = only(send(gateway, request(method, to_tag="callee-tag", cseq=cseq, branch="1")))
        via = parse_message(out.data).top_via
        assert via is not None
        branches.add(via.branch)
    assert len(branches) == 3


def test_a_request_with_no_branch_at_all_is_forwarded_with_one_of_ours() -> None:
    gateway = make_gateway()
    data = request("INVITE").replace(b";branch=z9hG4bKcaller1", b"")
    via = parse_message(only(send(gateway, data)).data).top_via
    assert via is not None and via.branch is not None and via.branch.startswith("z9hG4bKss")


def test_a_cancel_takes_its_invites_branch_by_the_via_branch_alone() -> None:
    """§9.1 wants the CANCEL's Request-URI equal to the INVITE's; a sloppy one still matches."""
    gateway = make_gateway()
    invite = parse_message(start_call(gateway).data).top_via
    cancel = request("CANCEL", branch="z9hG4bKcall-1@caller", uri="sip:bob@192.0.2.1")
    via = parse_message(only(send(gateway, cancel)).data).top_via
    assert invite is not None and via is not None and via.branch == invite.branch


def test_a_content_length_in_other_digits_than_ascii_is_bad() -> None:
    data = request("INVITE").replace(b"Content-Length: 0", "Content-Length: \xb2".encode("latin-1"))
    out = only(send(make_gateway(), data))
    assert out.data.startswith(b"SIP/2.0 400 Bad Content-Length\r\n")
