"""Bad input never raises out of the core and never corrupts a dialog (h11's fuzz invariant)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.determinism import SystemEntropy
from sipshadow.sip import SipParseError, parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to

SAMPLES = [
    request("INVITE", body="v=0\r\n"),
    request("BYE", to_tag="callee-tag", cseq=2),
    request("OPTIONS", uri="sip:192.0.2.1:5060", extra=("Route: <sip:192.0.2.1:5060;lr>",)),
    request("INVITE", extra=("Via: SIP/2.0/UDP 198.51.100.1;rport;received=1.2.3.4",)),
]
JUNK = st.sampled_from(
    [b"\r\n", b"\n", b"\x00", b",", b";", b"<", b">", b'"', b":", b" ", b"\xb9", b"\xff", b"=", b"@"]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "flip", "truncate"]))
        if action == "insert":
            data[position:position] = draw(JUNK)
        elif action == "delete" and position < len(data):
            del data[position : position + draw(st.integers(1, 20))]
        elif action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[position:]
    return bytes(data)


def gateway() -> Gateway:
    members = tuple(MemberSpec(member) for member in MEMBERS)
    return Gateway(GatewayConfig(ALG, members, probe_interval_s=1.0), SystemEntropy(1))


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(mutated(), st.binary(max_size=300)))
def test_mutated_input_never_raises_and_leaves_an_established_call_routable(data: bytes) -> None:
    core = gateway()
    (invite,) = core.handle(MessageReceived(request("INVITE", call_id="held", branch="z9hG4bKheld"), CALLER, 0.0))
    core.handle(MessageReceived(response_to(invite.data, 200, "OK"), invite.destination, 0.0))
    for source in (CALLER, MEMBERS[0]):
        outputs = core.handle(MessageReceived(data, source, 1.0))
        for output in outputs:
            try:
                parse_message(output.data)
            except SipParseError as error:  # what we send must be SIP we can read back
                raise AssertionError(f"gateway emitted unparseable output: {output.data!r}") from error
    core.handle(TimerExpired(2.0))
    bye = request("BYE", call_id="held", to_tag="callee-tag", cseq=9, branch="z9hG4bKbye")
    (forwarded,) = core.handle(MessageReceived(bye, CALLER, 3.0))
    assert forwarded.destination == invite.destination


def test_a_salvaged_header_goes_back_under_its_stripped_name() -> None:
    """Hypothesis found it: "V\\x0b:" strips to the compact Via, and the 400 echoed the raw
    name, which no parser accepts; the reply writes "V:" instead."""
    from sipshadow.core.replies import salvage_reply
    from sipshadow.sip import parse_message

    data = (b"INVITE sip:bob@192.0.2.1:5060 SIP/2.0\r\nV\x0b: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcaller1\r\n"
            b"Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 5\r\n\r\nv=0\r\n")  # fmt: skip
    salvaged = salvage_reply(data, 400, "Malformed header name")
    assert salvaged is not None
    reply, via = salvaged
    assert b"\r\nV: SIP/2.0/UDP 192.0.2.10:5070" in reply and via.host == "192.0.2.10"
    assert parse_message(reply).status == 400
