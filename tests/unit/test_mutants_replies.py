"""The ALG's own answers (§8.2.6, §16.3, RFC 4475): which status and reason phrase each broken
request gets, and what the answer carries (found by mutation testing: most reasons and the
answer's copying rules had no test). The reason phrase is what tells a caller's operator what
was wrong, so each is checked as it goes out on the wire."""

from __future__ import annotations

import pytest

from sipshadow.core.validation import check_request
from sipshadow.sip import SipParseError, Via, parse_message
from tests.unit.messages import CALLER, request
from tests.unit.test_gateway import make_gateway, only, send

VIA = b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcaller1"
FROM = b'From: "Alice" <sip:alice@example.org>;tag=caller-tag'
TO = b"To: <sip:bob@example.org>"
INVITE = request("INVITE")


def swap(old: bytes, new: bytes, data: bytes = INVITE) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


def start_line(new: bytes) -> bytes:
    return swap(b"INVITE sip:bob@192.0.2.1:5060 SIP/2.0", new)


BROKEN = {
    # the header line and the start line (the parser's reasons; the answer is salvaged)
    "Malformed header name": swap(b"Contact:", b"Con tact:"),
    "Missing end of headers": INVITE.replace(b"\r\n\r\n", b"\r\n"),
    "Bare CR or LF in header": swap(b"Contact: <sip:", b"Contact: \r<sip:"),
    "Malformed request line": start_line(b"INVITE sip:bob@192.0.2.1:5060 SIP/2.0 extra"),
    "Malformed method": start_line(b"INV@ITE sip:bob@192.0.2.1:5060 SIP/2.0"),
    "Malformed Request-URI": start_line(b"INVITE bob SIP/2.0"),
    # header values, read as the request is checked
    "Malformed header list": request("INVITE", extra=("Proxy-Require: foo, , bar",)),
    "Malformed parameter": swap(VIA, VIA + b";=x"),
    "Unterminated quoted string": swap(FROM, FROM + b';x="open'),
    "Malformed host": start_line(b"INVITE sip:bob@ho^st SIP/2.0"),
    "Port out of range": start_line(b"INVITE sip:bob@192.0.2.1:70000 SIP/2.0"),
    "Malformed URI": start_line(b"INVITE sip:@192.0.2.1 SIP/2.0"),
    "Malformed Via": swap(VIA, b"Via: SIP/2.0/UDP 192.0.2.10:5070 junk;branch=z9hG4bKcaller1"),
    "Malformed name-addr": swap(FROM, b'From: "Alice" sip:alice@example.org;tag=caller-tag'),
    "Malformed CSeq": swap(b"CSeq: 1 INVITE", b"CSeq: one INVITE"),
    "CSeq number too large": swap(b"CSeq: 1 INVITE", b"CSeq: 2147483648 INVITE"),
    "Multiple Content-Length": request("INVITE", extra=("Content-Length: 0",)),
    "Bad Content-Length": swap(b"Content-Length: 0", b"Content-Length: zero"),
    "Content-Length exceeds body": swap(b"Content-Length: 0", b"Content-Length: 10"),
    "CSeq method does not match request method": swap(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"),
    "Empty Call-ID": swap(b"Call-ID: call-1@caller", b"Call-ID: "),
    "Headers in Request-URI": start_line(b"INVITE sip:bob@192.0.2.1:5060?subject=hi SIP/2.0"),
    "Route is not a SIP URI": request("INVITE", extra=("Route: <tel:+15551234567>",)),
    "Duplicate To": request("INVITE", extra=("To: <sip:carol@example.org>",)),
}


@pytest.mark.parametrize("reason", sorted(BROKEN))
def test_a_broken_request_is_answered_400_with_a_reason_naming_the_fault(reason: str) -> None:
    gateway = make_gateway()
    out = only(send(gateway, BROKEN[reason]))
    assert out.destination == CALLER
    assert out.data.split(b"\r\n", 1)[0] == f"SIP/2.0 400 {reason}".encode()
    assert gateway.counters.rejected == {400: 1} and len(gateway.table) == 0


@pytest.mark.parametrize(
    ("data", "status_line"),
    [
        (request("INVITE", uri="http://example.org/"), "SIP/2.0 416 Unsupported URI Scheme"),
        (request("INVITE", max_forwards="0"), "SIP/2.0 483 Too Many Hops"),
        (request("INVITE", extra=("Proxy-Require: foo",)), "SIP/2.0 420 Bad Extension"),
        (start_line(b"INVITE sip:bob@192.0.2.1:5060 SIP/3.0"), "SIP/2.0 505 Version Not Supported"),
        (request("OPTIONS", uri="sip:192.0.2.1:5060"), "SIP/2.0 200 OK"),
    ],
)
def test_the_algs_other_answers_carry_their_standard_reason(data: bytes, status_line: str) -> None:
    out = only(send(make_gateway(), data))
    assert out.data.split(b"\r\n", 1)[0] == status_line.encode()


@pytest.mark.parametrize(
    ("fault", "data"),
    [
        ("Unterminated quoted string", swap(FROM, b'From: "Alice <sip:alice@example.org>;tag=caller-tag')),
        ("Malformed name-addr", swap(FROM, b"From: <sip:alice@example.org;tag=caller-tag")),
        ("Malformed name-addr", swap(FROM, b"From: <sip:alice@example.org> tag=caller-tag")),
        ("Malformed URI", swap(FROM, b"From: <alice>;tag=caller-tag")),
        ("Malformed URI", start_line(b"INVITE 1sip:bob@192.0.2.1 SIP/2.0")),
        ("Malformed header list", request("INVITE", extra=("Route: <sip:a;lr>, , <sip:b;lr>",))),
        ("Malformed request line", start_line(b"INVITE sip:bob@192.0.2.1:5060 HTTP/1.1")),
        ("Missing From", swap(FROM + b"\r\n", b"")),
    ],
)
def test_more_spellings_of_the_same_faults(fault: str, data: bytes) -> None:
    out = only(send(make_gateway(), data))
    assert out.data.split(b"\r\n", 1)[0] == f"SIP/2.0 400 {fault}".encode()


def test_faults_only_a_response_or_no_answer_can_show_still_name_themselves() -> None:
    """Where no answer goes out (a response, or a request with no Via) the parser's reason is
    still the one its caller logs."""
    cases = {
        "Malformed status line": lambda: parse_message(b"SIP/2.0 2xx OK\r\n\r\n"),
        "Malformed port": lambda: Via.parse("SIP/2.0/UDP h;rport=abc").response_address(),
        "Missing Via": lambda: check_request(parse_message(swap(VIA + b"\r\n", b""))),
    }
    for reason, call in cases.items():
        with pytest.raises(SipParseError) as raised:
            call()
        assert (raised.value.reason, raised.value.status, str(raised.value)) == (reason, 400, reason)


# -- what an answer carries (§8.2.6.2) ------------------------------------------------------


def answer_to(data: bytes) -> bytes:
    return only(send(make_gateway(), data)).data


def test_an_answer_copies_via_from_to_call_id_and_cseq_as_written_and_nothing_else() -> None:
    data = request("BYE", to_tag="t", cseq=2, uri="sip:192.0.2.1", max_forwards="0")
    data = swap(VIA, b"Via:    SIP/2.0/UDP   192.0.2.10:5070 ;branch=z9hG4bKcaller1", data)
    data = swap(b"Call-ID:", b"Max-Forwards: 0\r\nCall-ID:", data.replace(b"Max-Forwards: 0\r\n", b""))
    assert answer_to(data).decode() == "\r\n".join([
        "SIP/2.0 483 Too Many Hops",
        "Via:    SIP/2.0/UDP   192.0.2.10:5070 ;branch=z9hG4bKcaller1",
        'From: "Alice" <sip:alice@example.org>;tag=caller-tag',
        "To: <sip:bob@example.org>;tag=t",
        "Call-ID: call-1@caller",
        "CSeq: 2 BYE",
        "Server: sipshadow",
        "Content-Length: 0",
        "",
        "",
    ])  # fmt: skip


def test_an_answer_tags_an_untagged_to_and_leaves_from_alone() -> None:
    """An RFC 2543 caller sends no From tag: the answer adds none there, only to To."""
    untagged_from = b"From: <sip:alice@example.org>"
    for data in (request("OPTIONS", uri="sip:192.0.2.1:5060"), request("INVITE", max_forwards="0")):
        reply = parse_message(answer_to(swap(FROM, untagged_from, data)))
        assert reply.first("from") == "<sip:alice@example.org>"
        assert reply.to_tag is not None and reply.first("to") == f"<sip:bob@example.org>;tag={reply.to_tag}"


def test_an_answer_copies_a_malformed_to_unchanged() -> None:
    reply = answer_to(swap(TO, b"To: <sip:bob@example.org"))
    assert reply.startswith(b"SIP/2.0 400 Malformed name-addr\r\n")
    assert b"\r\nTo: <sip:bob@example.org\r\n" in reply


def test_the_to_tag_of_an_answer_depends_on_call_id_from_and_to() -> None:
    """The same request always gets the same tag (so the shadow's equals the primary's); one
    that differs in any of the three gets another."""

    def tag(data: bytes) -> str | None:
        return parse_message(answer_to(data)).to_tag

    base = request("OPTIONS", uri="sip:192.0.2.1:5060")
    variants = [
        base,
        swap(b"Call-ID: call-1@caller", b"Call-ID: call-2@caller", base),
        swap(FROM, FROM.replace(b"caller-tag", b"other-tag"), base),
        swap(TO, b"To: <sip:carol@example.org>", base),
    ]
    tags = [tag(data) for data in variants]
    assert tag(base) == tags[0] and len(set(tags)) == 4


def test_an_answer_ends_with_an_empty_line_and_no_body() -> None:
    reply = parse_message(answer_to(request("INVITE", max_forwards="0")))
    assert reply.first("content-length") == "0" and reply.body == b""
    salvaged = answer_to(swap(b"Contact:", b"Con tact:"))
    assert salvaged.endswith(b"\r\nServer: sipshadow\r\nContent-Length: 0\r\n\r\n")
