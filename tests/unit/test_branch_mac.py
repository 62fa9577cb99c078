"""The ALG's Via branch carries a keyed MAC, so a response is relayed only when it comes from
where its request went (RFC 3261 §16.7, §16.11 stateless branch, §26.1.5): no I/O here."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, SendMessage, TimerExpired
from sipshadow.core.dialogs import DialogState
from sipshadow.runtime.config import ConfigFile, build
from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.test_gateway import FixedEntropy, dialog_state, only

KEY = bytes(range(32))
ELSEWHERE = ("203.0.113.66", 5080)
BRANCH = re.compile(rb"branch=(z9hG4bKss[^;\r\n]*)")
OURS = re.compile(r"z9hG4bKss[0-9a-f]{16}\.[0-9a-f]{20}")


def keyed(key: bytes = KEY, *, probe_interval_s: float = 0.0) -> Gateway:
    members = tuple(MemberSpec(member) for member in MEMBERS)
    return Gateway(GatewayConfig(ALG, members, probe_interval_s=probe_interval_s, branch_key=key), FixedEntropy([]))


def send(gateway: Gateway, data: bytes, source: tuple[str, int] = CALLER, now: float = 0.0) -> list[SendMessage]:
    return gateway.handle(MessageReceived(data, source, now))


def branch_of(output: SendMessage) -> str:
    found = BRANCH.search(output.data)
    assert found is not None, output.data
    return found[1].decode()


def invite(call_id: str = "call-1@caller", branch: str = "z9hG4bKcaller1") -> bytes:
    return request("INVITE", call_id=call_id, branch=branch)


def ringing_call(gateway: Gateway) -> SendMessage:
    """An INVITE forwarded and its 180 relayed: the call rings, its dialog early."""
    forwarded = only(send(gateway, invite()))
    assert only(send(gateway, response_to(forwarded.data, 180, "Ringing"), forwarded.destination)).destination == CALLER
    return forwarded


# -- one branch per INVITE transaction (§16.11) ---------------------------------------------------


@pytest.mark.parametrize("incoming", ["z9hG4bKcaller1", "rfc2543-branch"])
def test_an_invite_its_retransmission_its_cancel_and_the_ack_of_its_failure_share_one_branch(incoming: str) -> None:
    gateway = keyed()
    first = only(send(gateway, invite(branch=incoming)))
    again = only(send(gateway, invite(branch=incoming), now=0.5))
    cancel = only(send(gateway, request("CANCEL", branch=incoming), now=1.0))
    busy = only(send(gateway, response_to(first.data, 486, "Busy Here"), first.destination, 1.1))
    assert busy.destination == CALLER
    ack = only(send(gateway, request("ACK", branch=incoming, to_tag="callee-tag"), now=1.2))
    assert first.destination == again.destination == cancel.destination == ack.destination == MEMBERS[0]
    assert branch_of(first) == branch_of(again) == branch_of(cancel) == branch_of(ack)
    assert OURS.fullmatch(branch_of(first))


def test_a_different_key_makes_a_different_branch_for_the_same_request() -> None:
    one, other = branch_of(only(send(keyed(KEY), invite()))), branch_of(only(send(keyed(KEY[::-1]), invite())))
    assert one != other
    assert one.split(".")[0] == other.split(".")[0]  # the digest is the request's; only the MAC is keyed


def test_a_primary_and_its_replica_with_the_same_key_make_identical_branches() -> None:
    primary, replica = keyed(), keyed()
    requests = [invite(f"c{index}", f"z9hG4bKc{index}") for index in range(4)]
    requests.append(request("MESSAGE", call_id="m1", branch="z9hG4bKm1"))
    for data in requests:
        assert send(primary, data) == send(replica, data)
    probes = primary.handle(TimerExpired(0.0))
    assert probes == replica.handle(TimerExpired(0.0))
    forwarded = only(send(primary, invite("late")))  # the replica serves after a takeover
    only(send(replica, invite("late")))
    assert only(send(replica, response_to(forwarded.data, 200, "OK"), forwarded.destination)).destination == CALLER


# -- a response counts only from where its request went (§16.7) -------------------------------------


def test_a_response_from_the_requests_destination_is_relayed_and_moves_the_dialog() -> None:
    gateway = keyed()
    forwarded = ringing_call(gateway)
    assert dialog_state(gateway) is DialogState.EARLY
    ok = only(send(gateway, response_to(forwarded.data, 200, "OK"), forwarded.destination, 1.0))
    assert ok.destination == CALLER and ok.data.startswith(b"SIP/2.0 200")
    assert dialog_state(gateway) is DialogState.CONFIRMED
    assert gateway.counters.forged_responses == 0


def test_the_same_response_from_another_address_is_dropped_and_counted_as_forged() -> None:
    gateway = keyed()
    forwarded = ringing_call(gateway)
    busy = response_to(forwarded.data, 486, "Busy Here")
    for source in (ELSEWHERE, MEMBERS[1], (MEMBERS[0][0], MEMBERS[0][1] + 1), CALLER):
        assert send(gateway, busy, source, 1.0) == []
    assert gateway.counters.forged_responses == 4 and gateway.counters.stray_responses == 0
    assert dialog_state(gateway) is DialogState.EARLY and gateway.table.active_per_member == [1, 0]
    ok = only(send(gateway, response_to(forwarded.data, 200, "OK"), forwarded.destination, 2.0))
    assert ok.destination == CALLER and dialog_state(gateway) is DialogState.CONFIRMED


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Call-ID: call-1@caller", b"Call-ID: call-2@caller"),
        (b"CSeq: 1 INVITE", b"CSeq: 2 INVITE"),
        (b"CSeq: 1 INVITE", b"CSeq: 1 BYE"),
    ],
)
def test_a_response_for_another_call_or_transaction_on_a_seen_branch_is_forged(old: bytes, new: bytes) -> None:
    """The MAC covers the Call-ID, the CSeq number and the method's class, not only the address."""
    gateway = keyed()
    forwarded = only(send(gateway, invite()))
    moved = response_to(forwarded.data, 486, "Busy Here").replace(old, new)
    assert send(gateway, moved, forwarded.destination) == []
    assert gateway.counters.forged_responses == 1


def test_invite_cancel_and_ack_are_one_class_and_other_methods_their_own() -> None:
    """A CANCEL's 200 (CSeq method CANCEL, on the INVITE's branch) is authentic; a MESSAGE's
    branch cannot vouch for an INVITE response."""
    gateway = keyed()
    forwarded = ringing_call(gateway)
    cancel = only(send(gateway, request("CANCEL"), now=1.0))
    ok_cancel = only(send(gateway, response_to(cancel.data, 200, "OK"), cancel.destination, 1.1))
    assert ok_cancel.destination == CALLER and b"CSeq: 1 CANCEL" in ok_cancel.data
    message = only(send(gateway, request("MESSAGE", call_id="m1", branch="z9hG4bKm1")))
    as_invite = response_to(message.data, 200, "OK").replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 INVITE")
    assert send(gateway, as_invite, message.destination) == []
    assert only(send(gateway, response_to(message.data, 200, "OK"), message.destination)).destination == CALLER
    assert gateway.counters.forged_responses == 1 and forwarded.destination == cancel.destination


def test_a_callees_request_is_answered_only_from_the_caller() -> None:
    """In-dialog requests towards the caller go to the caller's address: that is where the MAC points."""
    gateway = keyed()
    forwarded = ringing_call(gateway)
    only(send(gateway, response_to(forwarded.data, 200, "OK"), forwarded.destination))
    bye = request(
        "BYE", from_tag="callee-tag", to_tag="caller-tag", cseq=7, branch="z9hG4bKbye", via_host="192.0.2.21:5080"
    )
    towards_caller = only(send(gateway, bye, MEMBERS[0], 1.0))
    assert towards_caller.destination == CALLER
    ok = response_to(towards_caller.data, 200, "OK", to_tag=None)
    assert send(gateway, ok, MEMBERS[0], 1.1) == []
    assert only(send(gateway, ok, CALLER, 1.2)).destination == MEMBERS[0]
    assert gateway.counters.forged_responses == 1


def test_a_forged_response_from_a_down_members_address_does_not_bring_it_back() -> None:
    """Any authentic response proves a member alive; a forged one proves nothing."""
    gateway = keyed(probe_interval_s=1.0)
    for now in (0.0, 1.0, 2.0, 3.0):
        gateway.handle(TimerExpired(now))
    assert not gateway.health.members[0].up
    forwarded = only(send(gateway, invite(), now=3.5))
    assert forwarded.destination == MEMBERS[0]  # (every member looks down: it goes to one anyway)
    forged = response_to(forwarded.data, 180, "Ringing").replace(b"Call-ID: call-1@", b"Call-ID: other@")
    assert send(gateway, forged, MEMBERS[0], 3.6) == []
    assert not gateway.health.members[0].up and gateway.counters.member_up_events == 0
    assert only(send(gateway, response_to(forwarded.data, 180, "Ringing"), MEMBERS[0], 3.7)).destination == CALLER
    assert gateway.health.members[0].up and gateway.counters.member_up_events == 1


def test_the_peer_address_is_compared_without_regard_to_case() -> None:
    """An IPv6 member written in capitals answers from the address the socket spells in lowercase."""
    config = GatewayConfig(ALG, (MemberSpec(("2001:DB8::21", 5080)),), probe_interval_s=0.0, branch_key=KEY)
    gateway = Gateway(config, FixedEntropy([]))
    forwarded = only(send(gateway, invite()))
    ringing = response_to(forwarded.data, 180, "Ringing")
    assert only(send(gateway, ringing, ("2001:db8::21", 5080))).destination == CALLER
    assert gateway.counters.forged_responses == 0


# -- forgeries of the branch itself ---------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 7, 19, -21, -25])  # the MAC's first, middle, last; the dot; the digest
def test_a_branch_with_one_character_flipped_is_forged(position: int) -> None:
    gateway = keyed()
    forwarded = ringing_call(gateway)
    branch = branch_of(forwarded)
    mac_start = len(branch) - 20
    index = mac_start + position if position >= 0 else len(branch) + position
    flipped = branch[:index] + ("0" if branch[index] != "0" else "1") + branch[index + 1 :]
    busy = response_to(forwarded.data, 486, "Busy Here").replace(branch.encode(), flipped.encode())
    assert send(gateway, busy, forwarded.destination, 1.0) == []
    assert gateway.counters.forged_responses == 1 and dialog_state(gateway) is DialogState.EARLY


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b".",
        b"0123456789abcdef",
        b"0123456789abcdef.",
        b"0123456789abcdef." + b"0" * 19,
        b"0123456789abcdef." + b"0" * 21,
        b"0123456789ABCDEF." + b"0" * 20,
        b"0123456789abcdeg." + b"0" * 20,
        b"." + b"0" * 20,
        b"p.0.1." + b"0" * 20,
        b"p..." + b"0" * 20,
        b"p.99999999999999999999999.1." + b"0" * 20,
        b"0123456789abcdef." + b"\xff" * 20,
        b"0123456789abcdef." + "\u00e9".encode() * 10,
        b"\xed\xb3\xbf" * 10,
        b"0123456789abcdef.0000000000000000000%",
    ],
)
def test_a_truncated_or_garbled_branch_is_forged_and_never_raises(tail: bytes) -> None:
    gateway = keyed(probe_interval_s=1.0)
    gateway.handle(TimerExpired(0.0))
    forwarded = ringing_call(gateway)
    busy = BRANCH.sub(b"branch=z9hG4bKss" + tail, response_to(forwarded.data, 486, "Busy Here"), count=1)
    assert send(gateway, busy, forwarded.destination, 1.0) == []
    counters = gateway.counters
    assert counters.forged_responses + counters.malformed_responses == 1, counters
    assert dialog_state(gateway) is DialogState.EARLY and all(member.outstanding for member in gateway.health.members)


@settings(max_examples=300, deadline=None)
@given(tail=st.text(max_size=60) | st.binary(max_size=60).map(lambda data: data.decode("latin-1")))
def test_no_branch_anyone_can_write_without_the_key_is_relayed_or_raises(tail: str) -> None:
    gateway = keyed()
    forwarded = only(send(gateway, invite()))
    data = response_to(forwarded.data, 486, "Busy Here")
    forged = BRANCH.sub(lambda _: b"branch=z9hG4bKss" + tail.encode("utf-8", "surrogatepass"), data, count=1)
    assert send(gateway, forged, forwarded.destination) == []


# -- health probes ----------------------------------------------------------------------------------


def test_a_probe_answer_counts_from_its_member_and_is_forged_from_anywhere_else() -> None:
    gateway = keyed(probe_interval_s=1.0)
    probes = {probe.destination: probe.data for probe in gateway.handle(TimerExpired(0.0))}
    assert re.search(rb"branch=z9hG4bKssp\.0\.1\.[0-9a-f]{20}\r\n", probes[MEMBERS[0]])
    answer = response_to(probes[MEMBERS[0]], 200, "OK", to_tag="m")
    assert send(gateway, answer, ELSEWHERE, 0.5) == send(gateway, answer, MEMBERS[1], 0.5) == []
    assert gateway.counters.forged_responses == 2 and gateway.health.members[0].outstanding
    assert send(gateway, answer, MEMBERS[0], 0.6) == []
    assert not gateway.health.members[0].outstanding and gateway.counters.stray_probe_answers == 0


def test_a_probe_branch_signed_for_a_member_that_does_not_exist_is_stray() -> None:
    """Only a holder of the key could sign it; it is counted, never an IndexError."""
    gateway = keyed(probe_interval_s=1.0)
    probe = gateway.handle(TimerExpired(0.0))[0]
    call_id = "ssprobe-9-1@192.0.2.1:5060"
    mac = gateway._mac("p.9.1", call_id, 1, "OPTIONS", MEMBERS[0])
    signed = BRANCH.sub(f"branch=z9hG4bKssp.9.1.{mac}".encode(), probe.data).replace(b"ssprobe-0-1@", b"ssprobe-9-1@")
    assert send(gateway, response_to(signed, 200, "OK", to_tag="m"), MEMBERS[0], 0.5) == []
    assert (gateway.counters.stray_probe_answers, gateway.counters.forged_responses) == (1, 0)


# -- where the key comes from (the shell) -------------------------------------------------------------

PAIR = b"""
[cluster]
members = ["127.0.0.1:5070"]
[replication]
role = "%s"
listen = "127.0.0.1:%d"
peer = "127.0.0.1:%d"
key = "%s"
"""


def pair_node(role: str, key: str) -> GatewayConfig:
    ports = (7001, 7002) if role == "primary" else (7002, 7001)
    text = PAIR % (role.encode(), ports[0], ports[1], key.encode())
    return build(msgspec.toml.decode(text, type=ConfigFile)).gateway


def test_both_nodes_of_a_pair_derive_one_branch_key_from_the_pair_key_and_solo_nodes_draw_their_own() -> None:
    primary, shadow = pair_node("primary", "k" * 24), pair_node("shadow", "k" * 24)
    assert primary.branch_key == shadow.branch_key and len(primary.branch_key) == 32
    assert primary.branch_key != b"k" * 24 and b"k" * 24 not in primary.branch_key
    assert pair_node("primary", "j" * 24).branch_key != primary.branch_key
    solo = [build(ConfigFile(), members=["127.0.0.1:5070"]).gateway.branch_key for _ in range(2)]
    assert len(solo[0]) == 32 and solo[0] != solo[1]
    assert primary == shadow and "branch_key" not in repr(primary)


def test_the_unkeyed_default_is_for_unit_tests_and_differs_from_a_keyed_gateway() -> None:
    assert GatewayConfig(ALG, (MemberSpec(MEMBERS[0]),)).branch_key == b""
    unkeyed = Gateway(GatewayConfig(ALG, (MemberSpec(MEMBERS[0]),), probe_interval_s=0.0), FixedEntropy([]))
    assert branch_of(only(send(unkeyed, invite()))) != branch_of(only(send(keyed(), invite())))
    parsed = parse_message(only(send(keyed(), invite())).data)
    assert parsed.top_via is not None and OURS.fullmatch(parsed.top_via.branch or "")


def test_a_request_sent_to_a_host_name_is_answered_from_whatever_address_the_name_resolved_to() -> None:
    """The core never learns what a member's name resolves to (the shell does): its branch is
    bound to the key, Call-ID and CSeq only, so the answer from the resolved address is
    relayed, while a branch bound to an address still refuses every other address."""
    named = ("member.example", 5060)
    config = GatewayConfig(ALG, (MemberSpec(named),), probe_interval_s=0.0, branch_key=KEY)
    gateway = Gateway(config, FixedEntropy([]))
    forwarded = only(send(gateway, invite()))
    assert forwarded.destination == named
    relayed = send(gateway, response_to(forwarded.data, 180, "Ringing"), ("198.51.100.7", 5060))
    assert only(relayed).destination == CALLER and gateway.counters.forged_responses == 0
    bound = keyed()
    by_address = only(send(bound, invite()))
    send(bound, response_to(by_address.data, 180, "Ringing"), ("198.51.100.7", 5060))
    assert bound.counters.forged_responses == 1
