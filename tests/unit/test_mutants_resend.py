"""What a new primary re-sends at takeover (found by mutation testing): only a response proves
a request delivered, a provisional is dropped only for a final of its own transaction, and
nothing that does not parse makes the plan fail."""

from __future__ import annotations

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, SendMessage
from sipshadow.core.resend import resend_plan, without_stale_provisionals
from sipshadow.determinism import SystemEntropy
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to


def forwarded(call_id: str) -> SendMessage:
    gateway = Gateway(GatewayConfig(ALG, (MemberSpec(MEMBERS[0]),), probe_interval_s=0.0), SystemEntropy(1))
    (output,) = gateway.handle(MessageReceived(request("INVITE", call_id=call_id, branch=f"z9hG4bK{call_id}"),
                                                CALLER, 0.0))  # fmt: skip
    return output


def test_the_response_to_the_only_request_proves_it_delivered() -> None:
    invite = forwarded("a")
    assert resend_plan([invite], [response_to(invite.data, 100, "Trying")]) == []


def test_a_request_seen_with_our_branch_proves_nothing() -> None:
    """Only a response to it shows that a request reached its next hop."""
    invite = forwarded("a")
    assert resend_plan([invite], [invite.data, request("ACK", branch="x")]) == [invite]


def test_a_response_to_another_request_proves_nothing() -> None:
    invite, other = forwarded("a"), forwarded("b")
    assert resend_plan([invite], [response_to(other.data, 180, "Ringing")]) == [invite]


def test_outputs_that_do_not_parse_or_carry_no_via_are_kept() -> None:
    broken = SendMessage(b"INVITE nonsense", MEMBERS[0])
    no_via = SendMessage(b"MESSAGE sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n", MEMBERS[0])
    response_no_via = SendMessage(b"SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\n", CALLER)
    response_no_cseq = SendMessage(b"SIP/2.0 180 R\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nCall-ID: a\r\n\r\n",
                                    CALLER)  # fmt: skip
    outputs = [broken, no_via, response_no_via, response_no_cseq]
    assert resend_plan(outputs, [b"SIP/2.0 200 OK\r\n\r\n"]) == outputs


def test_a_provisional_stays_when_the_final_is_of_another_branch_of_the_same_request() -> None:
    """An upstream fork: the same Call-ID and CSeq on two branches are two transactions."""
    one = request("INVITE", branch="z9hG4bKbranch-one")
    two = request("INVITE", branch="z9hG4bKbranch-two")
    ringing = SendMessage(response_to(one, 180, "Ringing"), CALLER)
    final = SendMessage(response_to(two, 486, "Busy"), CALLER)
    assert without_stale_provisionals([ringing, final]) == [ringing, final]


def test_dropping_a_stale_provisional_keeps_everything_sent_before_it() -> None:
    invite = request("INVITE")
    earlier = [SendMessage(request("MESSAGE", call_id="m"), MEMBERS[0]), forwarded("b")]
    ringing, ok = (SendMessage(response_to(invite, status, "X"), CALLER) for status in (180, 200))
    assert without_stale_provisionals([*earlier, ringing, ok]) == [*earlier, ok]
