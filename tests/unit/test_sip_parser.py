"""The SIP parser, table-driven, in the spirit of RFC 4475 (SIP torture tests).

Valid but tortuous messages must parse and give the right typed values; malformed ones must
raise `SipParseError` with a reason fit for a 400, from `parse_message` or from the accessor
that reads the broken part. The rewriting helpers must keep what they do not touch intact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sipshadow.sip import (
    NameAddr,
    SipMessage,
    SipParseError,
    Via,
    parse_cseq,
    parse_message,
    split_header_values,
)
from sipshadow.sip.headers import COMPACT_FORMS, Uri
from tests.unit.sip_messages import (
    BASIC_INVITE,
    BASIC_RESPONSE,
    COMPACT_INVITE,
    EMPTY_REASON_RESPONSE,
    STRANGE_UNKNOWN_LINES,
    TORTUOUS_BODY,
    TORTUOUS_INVITE,
    crlf,
)

START = "INVITE sip:bob@biloxi.example.com SIP/2.0"
VIA = "Via: SIP/2.0/UDP pc33.atlanta.example.com:5070;branch=z9hG4bK776asdhds"
FROM = 'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774'
TO = "To: <sip:bob@biloxi.example.com>"
CALL_ID = "Call-ID: a84b4c76e66710@pc33.atlanta.example.com"
CSEQ = "CSeq: 314159 INVITE"


def build(
    *,
    start: str = START,
    via: str | None = VIA,
    from_: str | None = FROM,
    to: str | None = TO,
    call_id: str | None = CALL_ID,
    cseq: str | None = CSEQ,
    extra: tuple[str, ...] = (),
    body: bytes = b"",
) -> bytes:
    """A request with the usual headers, each replaceable (a full line) or omitted (None)."""
    lines = [line for line in (via, from_, to, call_id, cseq) if line is not None]
    return crlf(start, *lines, *extra, f"Content-Length: {len(body)}", body=body)


def via_summary(via: Via | None) -> tuple[str, str, int | None, str | None] | None:
    return None if via is None else (via.transport, via.host, via.port, via.branch)


def summary(message: SipMessage) -> dict[str, Any]:
    """Every typed value a proxy reads, for comparing against a table row."""
    return {
        "method": message.method,
        "uri": message.uri,
        "status": message.status,
        "reason": message.reason,
        "call_id": message.call_id,
        "cseq": message.cseq,
        "from_tag": message.from_tag,
        "to_tag": message.to_tag,
        "via": via_summary(message.top_via),
        "vias": [via_summary(Via.parse(value)) for value in message.values("via")],
        "body": message.body,
    }


BASIC_VIA = ("UDP", "pc33.atlanta.example.com", 5070, "z9hG4bK776asdhds")

# -- valid messages ---------------------------------------------------------------------------

VALID_CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    (
        "basic-invite",
        BASIC_INVITE,
        {
            "method": "INVITE",
            "uri": "sip:bob@biloxi.example.com",
            "status": 0,
            "call_id": "a84b4c76e66710@pc33.atlanta.example.com",
            "cseq": (314159, "INVITE"),
            "from_tag": "1928301774",
            "to_tag": None,
            "via": BASIC_VIA,
            "body": b"",
        },
    ),
    (
        "basic-response-two-vias-in-one-header",
        BASIC_RESPONSE,
        {
            "method": None,
            "status": 180,
            "reason": "Ringing",
            "to_tag": "a6c85cf",
            "via": ("UDP", "192.0.2.1", 5060, "z9hG4bKss0011"),
            "vias": [
                ("UDP", "192.0.2.1", 5060, "z9hG4bKss0011"),
                ("UDP", "pc33.atlanta.example.com", 5070, "z9hG4bK776asdhds"),
            ],
        },
    ),
    (
        "tortuous-invite",
        TORTUOUS_INVITE,
        {
            "method": "INVITE",
            "uri": "sip:bob@[2001:db8::20]:5062;Transport=UDP;unknownParam",
            "call_id": "tortuous.9f8e7d@atlanta.example.com",
            "cseq": (9, "INVITE"),
            "from_tag": "9fxced76sl",
            "to_tag": "8321234356",
            "via": ("UDP", "[2001:db8::10]", 5070, "z9hG4bKtortuous1"),
            "vias": [
                ("UDP", "[2001:db8::10]", 5070, "z9hG4bKtortuous1"),
                ("TCP", "proxy.example.com", 5061, "z9hG4bKsecond"),
                ("UDP", "192.0.2.5", None, "z9hG4bKthird"),
            ],
            "body": TORTUOUS_BODY,
        },
    ),
    (
        "every-compact-form",
        COMPACT_INVITE,
        {
            "call_id": "compact@host.example.com",
            "cseq": (7, "INVITE"),
            "from_tag": "compact-from",
            "to_tag": "compact-to",
            "via": ("UDP", "host.example.com", None, "z9hG4bKcompact"),
        },
    ),
    (
        "empty-reason-phrase-and-no-angle-brackets",
        EMPTY_REASON_RESPONSE,
        {"status": 200, "reason": "", "from_tag": "no-brackets", "to_tag": "also-none"},
    ),
    (
        "status-line-without-reason-or-space",
        crlf("SIP/2.0 100", VIA, CALL_ID, CSEQ),
        {"status": 100, "reason": ""},
    ),
    (
        "reason-phrase-with-spaces-and-symbols",
        crlf("SIP/2.0 503 Service   Unavailable (try again: later)", VIA, CALL_ID),
        {"status": 503, "reason": "Service   Unavailable (try again: later)"},
    ),
    (
        "lower-case-sip-version",
        crlf("invite sip:bob@biloxi.example.com sip/2.0", VIA, CALL_ID, CSEQ),
        {"method": "invite", "cseq": (314159, "INVITE")},
    ),
    (
        "leading-crlfs-before-start-line",
        b"\r\n\r\n\r\n" + BASIC_INVITE,
        {"method": "INVITE", "cseq": (314159, "INVITE"), "via": BASIC_VIA},
    ),
    (
        "one-leading-crlf",
        b"\r\n" + BASIC_RESPONSE,
        {"status": 180, "to_tag": "a6c85cf"},
    ),
    (
        "lf-only-line-endings",
        BASIC_INVITE.replace(b"\r\n", b"\n"),
        {"method": "INVITE", "from_tag": "1928301774", "via": BASIC_VIA, "body": b""},
    ),
    (
        "lf-only-with-folding-and-body",
        (
            b"MESSAGE sip:bob@biloxi.example.com SIP/2.0\n"
            b"Via: SIP/2.0/UDP\n  host.example.com;branch=z9hG4bKlf\n"
            b"CSeq: 1\n\tMESSAGE\nCall-ID: lf@host\nContent-Length: 5\n\nhello"
        ),
        {"method": "MESSAGE", "cseq": (1, "MESSAGE"), "body": b"hello"},
    ),
    (
        "extension-method-with-every-token-character",
        crlf(
            "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$"
            "/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
            VIA,
            CALL_ID,
            "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~",
        ),
        {
            "method": "!interesting-Method0123456789_*+`.%indeed'~",
            "cseq": (139122385, "!interesting-Method0123456789_*+`.%indeed'~"),
        },
    ),
    (
        "non-sip-request-uri-scheme",
        crlf("OPTIONS tel:+1-201-555-0123;phone-context=example.com SIP/2.0", VIA, CALL_ID),
        {"method": "OPTIONS", "uri": "tel:+1-201-555-0123;phone-context=example.com"},
    ),
    (
        "vias-across-headers-and-within-headers",
        build(
            via="Via: SIP/2.0/UDP a.example.com;branch=z9hG4bKa, SIP/2.0/TCP b.example.com:5061;branch=z9hG4bKb",
            extra=(
                "v: SIP/2.0/SCTP [::1];branch=z9hG4bKc,SIP/2.0/TLS d.example.com;branch=z9hG4bKd",
                "VIA: SIP/2.0/UDP 192.0.2.9:1;branch=z9hG4bKe",
            ),
        ),
        {
            "via": ("UDP", "a.example.com", None, "z9hG4bKa"),
            "vias": [
                ("UDP", "a.example.com", None, "z9hG4bKa"),
                ("TCP", "b.example.com", 5061, "z9hG4bKb"),
                ("SCTP", "[::1]", None, "z9hG4bKc"),
                ("TLS", "d.example.com", None, "z9hG4bKd"),
                ("UDP", "192.0.2.9", 1, "z9hG4bKe"),
            ],
        },
    ),
    (
        "via-lws-around-slashes-and-port-colon",
        build(via="Via:SIP /2.0/ udp  Host.Example.COM : 5080 ;  BRANCH  =  z9hG4bKlws"),
        {"via": ("UDP", "host.example.com", 5080, "z9hG4bKlws")},
    ),
    (
        "via-ipv6-full-with-port",
        build(via="Via: SIP/2.0/UDP [2001:0DB8:0000:0000:0000:0000:0000:0001]:65535;branch=b6"),
        {"via": ("UDP", "[2001:0db8:0000:0000:0000:0000:0000:0001]", 65535, "b6")},
    ),
    (
        "via-ipv4-mapped-ipv6",
        build(via="Via: SIP/2.0/UDP [::ffff:192.0.2.1];branch=z9hG4bKmapped"),
        {"via": ("UDP", "[::ffff:192.0.2.1]", None, "z9hG4bKmapped")},
    ),
    (
        "via-quoted-parameter-with-semicolon-and-comma",
        build(via='Via: SIP/2.0/UDP host.example.com;x-note="a;b, c";branch=z9hG4bKq'),
        {"via": ("UDP", "host.example.com", None, "z9hG4bKq")},
    ),
    (
        "header-names-in-odd-case",
        build(
            via="vIa: SIP/2.0/UDP h.example.com;branch=z9hG4bKcase",
            from_="FROM: <sip:a@example.com>;tag=up",
            to="to: <sip:b@example.com>;tag=down",
            call_id="CALL-ID: upper@example.com",
            cseq="cseq: 5 INVITE",
        ),
        {
            "call_id": "upper@example.com",
            "cseq": (5, "INVITE"),
            "from_tag": "up",
            "to_tag": "down",
            "via": ("UDP", "h.example.com", None, "z9hG4bKcase"),
        },
    ),
    (
        "lws-around-header-colon",
        build(
            via="Via \t :\t SIP/2.0/UDP h.example.com;branch=z9hG4bKcolon",
            call_id="Call-ID   :    spaced@example.com   ",
            cseq="CSeq\t:\t42\t INVITE\t",
        ),
        {
            "call_id": "spaced@example.com",
            "cseq": (42, "INVITE"),
            "via": ("UDP", "h.example.com", None, "z9hG4bKcolon"),
        },
    ),
    (
        "folded-from-to-and-cseq",
        build(
            from_='From: "Folded"\r\n <sip:a@example.com>\r\n\t;tag=fold1',
            to="To:\r\n  <sip:b@example.com>;\r\n tag=fold2",
            cseq="CSeq: 77\r\n    \t INVITE",
        ),
        {"from_tag": "fold1", "to_tag": "fold2", "cseq": (77, "INVITE")},
    ),
    (
        "display-names-with-commas-escaped-quotes-and-angle",
        build(
            from_='From: "Doe, John \\"JD\\" <jd>" <sip:jd@example.com;user=phone>;tag=q1',
            to='To: "back\\\\slash" <sip:b@example.com>;tag=q2',
        ),
        {"from_tag": "q1", "to_tag": "q2"},
    ),
    (
        "unquoted-display-name-and-empty-quoted-name",
        build(
            from_="From: Alice Q. Public <sip:a@example.com>;tag=u1",
            to='To: "" <sip:b@example.com>;tag=u2',
        ),
        {"from_tag": "u1", "to_tag": "u2"},
    ),
    (
        "tags-without-angle-brackets-and-odd-case-names",
        build(
            from_="From: sip:alice@atlanta.example.com;TAG=MixedCase",
            to="To: sips:bob@biloxi.example.com ; Tag = spaced",
        ),
        {"from_tag": "MixedCase", "to_tag": "spaced"},
    ),
    (
        "tag-after-uri-params-inside-brackets",
        build(
            from_="From: <sip:a@example.com;tag=not-this-one>;tag=this-one",
            to="To: <sip:b@[2001:db8::2]:5070;transport=udp>;x;tag=v6",
        ),
        {"from_tag": "this-one", "to_tag": "v6"},
    ),
    (
        "from-quoted-parameter-with-semicolon",
        build(from_='From: <sip:a@example.com>;x-q="one;two";tag=after-quoted'),
        {"from_tag": "after-quoted"},
    ),
    (
        "cseq-boundaries",
        build(cseq="CSeq: 2147483647 INVITE"),
        {"cseq": (2**31 - 1, "INVITE")},
    ),
    (
        "cseq-zero-and-leading-zeros",
        build(cseq="CSeq: 0000000000 INVITE"),
        {"cseq": (0, "INVITE")},
    ),
    (
        "binary-body-with-matching-content-length",
        build(body=bytes(range(256)) + b"\r\n\r\n\x00"),
        {"body": bytes(range(256)) + b"\r\n\r\n\x00"},
    ),
    (
        "no-headers-at-all",
        crlf("OPTIONS sip:ping@example.com SIP/2.0"),
        {"method": "OPTIONS", "call_id": None, "cseq": None, "via": None, "vias": []},
    ),
]
VALID_PARAMS = [case[1:] for case in VALID_CASES]
VALID_IDS = [case[0] for case in VALID_CASES]


@pytest.mark.parametrize(("data", "expected"), VALID_PARAMS, ids=VALID_IDS)
def test_valid_message_typed_values(data: bytes, expected: dict[str, Any]) -> None:
    message = parse_message(data)
    got = summary(message)
    assert {key: got[key] for key in expected} == expected


@pytest.mark.parametrize(("data", "expected"), VALID_PARAMS, ids=VALID_IDS)
def test_valid_message_round_trips(data: bytes, expected: dict[str, Any]) -> None:
    message = parse_message(data)
    again = parse_message(message.to_bytes())
    assert summary(again) == summary(message)
    assert again.to_bytes() == message.to_bytes()


@pytest.mark.parametrize(
    "data",
    [BASIC_INVITE, BASIC_RESPONSE, COMPACT_INVITE, EMPTY_REASON_RESPONSE],
    ids=["basic-invite", "basic-response", "compact", "empty-reason"],
)
def test_unfolded_crlf_message_comes_back_byte_identical(data: bytes) -> None:
    assert parse_message(data).to_bytes() == data


def test_tortuous_invite_other_headers() -> None:
    message = parse_message(TORTUOUS_INVITE)
    assert message.first("max-forwards") == "0068"
    assert message.first("subject") == ""
    assert message.first("newfangledheader") == "newfangled value continued newfangled value"
    assert message.first("content-type") == "application/sdp"
    assert message.first("content-length") == str(len(TORTUOUS_BODY))
    assert message.values("contact") == ['"Quoted, Contact" <sip:alice@[2001:db8::10]:5070;transport=udp>;expires=60']
    assert message.count("via") == 2
    via = message.top_via
    assert via is not None
    assert via.params == {"rport": None, "branch": "z9hG4bKtortuous1"}
    assert via.response_address() == ("2001:db8::10", 5070)
    third = Via.parse(message.values("via")[2])
    assert third.params == {"branch": "z9hG4bKthird"}


@pytest.mark.parametrize(("short", "long"), sorted(COMPACT_FORMS.items()))
@pytest.mark.parametrize("case", [str.lower, str.upper], ids=["lower", "upper"])
def test_every_compact_form_maps_to_its_long_name(short: str, long: str, case: Callable[[str], str]) -> None:
    value = {
        "via": "SIP/2.0/UDP h.example.com;branch=z9hG4bKx",
        "from": "<sip:a@example.com>;tag=f",
        "to": "<sip:b@example.com>;tag=t",
        "call-id": "id@example.com",
        "content-length": "0",
    }.get(long, "some value")
    message = parse_message(crlf(START, f"{case(short)}: {value}", f"{case(short)} :{value}"))
    assert message.count(long) == 2
    assert message.first(long) == value
    assert message.headers[0][1] == case(short)  # the name as written is kept for to_bytes()


def test_compact_invite_has_every_compact_form() -> None:
    message = parse_message(COMPACT_INVITE)
    for long in COMPACT_FORMS.values():
        assert message.count(long) == 1, long


def test_unknown_headers_come_back_byte_identical() -> None:
    out = parse_message(TORTUOUS_INVITE).to_bytes()
    for line in STRANGE_UNKNOWN_LINES:
        assert b"\r\n" + line.encode("latin-1") + b"\r\n" in out, line
    assert out.endswith(b"\r\n\r\n" + TORTUOUS_BODY)


def test_body_is_kept_verbatim_even_if_it_looks_like_headers() -> None:
    body = b"Via: SIP/2.0/UDP evil.example.com\r\n\r\nCSeq: 1 BYE\r\n"
    message = parse_message(build(body=body))
    assert message.body == body
    assert message.count("via") == 1
    assert message.cseq == (314159, "INVITE")


# -- invalid messages -------------------------------------------------------------------------


def _response_address(message: SipMessage) -> object:
    via = message.top_via
    assert via is not None
    return via.response_address()


ACCESSORS: dict[str, Callable[[SipMessage], object]] = {
    "call_id": lambda m: m.call_id,
    "cseq": lambda m: m.cseq,
    "from_tag": lambda m: m.from_tag,
    "to_tag": lambda m: m.to_tag,
    "top_via": lambda m: m.top_via,
    "vias": lambda m: m.values("via"),
    "response_address": _response_address,
    "request_uri": lambda m: Uri.parse(m.uri),
}

#: (id, datagram, where the error surfaces: None for parse_message, else an ACCESSORS key).
INVALID_CASES: list[tuple[str, bytes, str | None]] = [
    # framing
    ("empty-datagram", b"", None),
    ("crlf-keepalive-only", b"\r\n\r\n", None),
    ("no-end-of-headers", b"INVITE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n", None),
    ("single-line-no-terminator", b"INVITE sip:a@example.com SIP/2.0", None),
    ("garbage-bytes", b"\xff\xfe\x00\x01\x80garbage\x00\r\n\r\n", None),
    ("binary-noise-with-crlfs", bytes(range(1, 32)) + b"\r\n\r\n" + bytes(range(128, 256)), None),
    ("call-id-only", b"Call-ID: only@example.com\r\n\r\n", None),
    ("header-line-without-colon", build(extra=("This line has no colon",)), None),
    ("empty-header-name", build(extra=(": no name",)), None),
    ("header-name-with-space", build(extra=("Bad Name: value",)), None),
    ("header-name-with-nul", build(extra=("Via\x00: SIP/2.0/UDP h",)), None),
    ("header-name-with-nbsp", build(extra=("Via\xa0: SIP/2.0/UDP evil.example.com",)), None),
    ("header-name-with-nel", build(extra=("\x85Via: SIP/2.0/UDP evil.example.com",)), None),
    # request line
    ("request-line-double-space", build(start="INVITE  sip:a@example.com SIP/2.0"), None),
    ("request-line-space-before-version", build(start="INVITE sip:a@example.com  SIP/2.0"), None),
    ("request-line-trailing-space", build(start="INVITE sip:a@example.com SIP/2.0 "), None),
    ("request-line-leading-space", build(start=" INVITE sip:a@example.com SIP/2.0"), None),
    ("request-line-tabs", build(start="INVITE\tsip:a@example.com\tSIP/2.0"), None),
    ("request-line-missing-version", build(start="INVITE sip:a@example.com"), None),
    ("request-line-empty-version", build(start="INVITE sip:a@example.com "), None),
    ("request-line-missing-uri", build(start="INVITE SIP/2.0"), None),
    ("request-uri-with-spaces", build(start="INVITE sip:a @example.com SIP/2.0"), None),
    ("request-uri-without-scheme", build(start="INVITE bob SIP/2.0"), None),
    ("unsupported-version-request", build(start="INVITE sip:a@example.com SIP/7.0"), None),
    ("version-without-slash", build(start="INVITE sip:a@example.com SIP2.0"), None),
    ("bad-method-token", build(start="INV@ITE sip:a@example.com SIP/2.0"), None),
    ("method-with-parenthesis", build(start="INV(ITE) sip:a@example.com SIP/2.0"), None),
    ("method-with-nul", build(start="INVITE\x00 sip:a@example.com SIP/2.0"), None),
    ("empty-start-line", b"\x00\r\nVia: SIP/2.0/UDP h\r\n\r\n", None),
    ("request-uri-bad-host", build(start="OPTIONS sip:a@exa mple SIP/2.0"), None),
    ("request-uri-bad-port", build(start="OPTIONS sip:a@example.com:99999 SIP/2.0"), "request_uri"),
    ("request-uri-port-zero", build(start="OPTIONS sip:a@example.com:0 SIP/2.0"), "request_uri"),
    ("request-uri-unclosed-ipv6", build(start="OPTIONS sip:[2001:db8::1 SIP/2.0"), "request_uri"),
    ("request-uri-bare-ipv6", build(start="OPTIONS sip:2001:db8::1 SIP/2.0"), "request_uri"),
    ("request-uri-empty-host", build(start="OPTIONS sip:alice@ SIP/2.0"), "request_uri"),
    # status line
    ("unsupported-version-response", crlf("SIP/7.0 200 OK", VIA), None),
    ("status-code-too-small", crlf("SIP/2.0 099 Odd", VIA), None),
    ("status-code-too-large", crlf("SIP/2.0 700 Odd", VIA), None),
    ("status-code-four-digits", crlf("SIP/2.0 2000 OK", VIA), None),
    ("status-code-two-digits", crlf("SIP/2.0 20 OK", VIA), None),
    ("status-code-not-a-number", crlf("SIP/2.0 abc OK", VIA), None),
    ("status-code-glued-to-reason", crlf("SIP/2.0 200OK", VIA), None),
    ("status-line-double-space", crlf("SIP/2.0  200 OK", VIA), None),
    # CSeq
    ("cseq-not-a-number", build(cseq="CSeq: abc INVITE"), "cseq"),
    ("cseq-negative", build(cseq="CSeq: -1 INVITE"), "cseq"),
    ("cseq-fraction", build(cseq="CSeq: 1.5 INVITE"), "cseq"),
    ("cseq-too-large", build(cseq="CSeq: 2147483648 INVITE"), "cseq"),
    ("cseq-way-too-large", build(cseq="CSeq: 36893488147419103232 INVITE"), "cseq"),
    ("cseq-missing-method", build(cseq="CSeq: 1"), "cseq"),
    ("cseq-missing-number", build(cseq="CSeq: INVITE"), "cseq"),
    ("cseq-method-glued", build(cseq="CSeq: 1INVITE"), "cseq"),
    ("cseq-two-methods", build(cseq="CSeq: 1 INVITE BYE"), "cseq"),
    ("cseq-empty", build(cseq="CSeq:"), "cseq"),
    ("cseq-nbsp-separator", build(cseq="CSeq: 1\xa0INVITE"), "cseq"),
    # Via
    ("via-non-numeric-port", build(via="Via: SIP/2.0/UDP h.example.com:abc;branch=1"), "top_via"),
    ("via-port-zero", build(via="Via: SIP/2.0/UDP h.example.com:0;branch=z9hG4bK1"), "top_via"),
    ("via-port-too-large", build(via="Via: SIP/2.0/UDP h.example.com:65536;branch=1"), "top_via"),
    ("via-port-six-digits", build(via="Via: SIP/2.0/UDP h.example.com:123456"), "top_via"),
    ("via-without-sip-prefix", build(via="Via: UDP h.example.com;branch=z9hG4bK1"), "top_via"),
    ("via-wrong-protocol-name", build(via="Via: SIPS/2.0/UDP h.example.com"), "top_via"),
    ("via-wrong-version", build(via="Via: SIP/3.0/UDP h.example.com"), "top_via"),
    ("via-missing-transport", build(via="Via: SIP/2.0 h.example.com"), "top_via"),
    ("via-missing-host", build(via="Via: SIP/2.0/UDP ;branch=z9hG4bK1"), "top_via"),
    ("via-empty", build(via="Via:"), "top_via"),
    ("via-unclosed-ipv6", build(via="Via: SIP/2.0/UDP [2001:db8::1;branch=z9hG4bK1"), "top_via"),
    ("via-host-with-space", build(via="Via: SIP/2.0/UDP h.example .com"), "top_via"),
    ("via-bad-param-name", build(via="Via: SIP/2.0/UDP h.example.com;=z9hG4bK1"), "top_via"),
    ("via-empty-list-element", build(via="Via: SIP/2.0/UDP a.example,,SIP/2.0/UDP b"), "top_via"),
    ("via-trailing-comma", build(via="Via: SIP/2.0/UDP a.example.com,"), "top_via"),
    ("via-unbalanced-quote-in-list", build(via='Via: SIP/2.0/UDP a;x="q, SIP/2.0/UDP b'), "vias"),
    ("via-nbsp-before-host", build(via="Via: SIP/2.0/UDP\xa0evil.example.com"), "top_via"),
    (
        "via-rport-not-a-number",
        build(via="Via: SIP/2.0/UDP h.example.com;rport=abc;branch=z9hG4bK1"),
        "response_address",
    ),
    (
        "via-rport-superscript-digit",
        build(via="Via: SIP/2.0/UDP h.example.com;rport=\xb9\xb2;branch=z9hG4bK1"),
        "response_address",
    ),
    (
        "via-rport-with-underscore",
        build(via="Via: SIP/2.0/UDP h.example.com;rport=50_60;branch=z9hG4bK1"),
        "response_address",
    ),
    (
        "via-rport-huge",
        build(via="Via: SIP/2.0/UDP h.example.com;rport=" + "9" * 5000),
        "response_address",
    ),
    ("via-rport-zero", build(via="Via: SIP/2.0/UDP h.example.com;rport=0"), "response_address"),
    # From / To
    ("from-unterminated-quote", build(from_='From: "Alice <sip:a@example.com>;tag=1'), "from_tag"),
    (
        "from-escaped-final-quote",
        build(from_='From: "Alice\\" <sip:a@example.com>;tag=1'),
        "from_tag",
    ),
    ("from-less-than-without-greater", build(from_="From: <sip:a@example.com;tag=1"), "from_tag"),
    ("from-quoted-name-without-uri", build(from_='From: "Alice";tag=1'), "from_tag"),
    ("from-quoted-name-bare-uri", build(from_='From: "Alice" sip:a@example.com;tag=1'), "from_tag"),
    ("from-uri-without-scheme", build(from_="From: <alice@example.com>;tag=1"), "from_tag"),
    ("from-empty-angle-brackets", build(from_="From: <>;tag=1"), "from_tag"),
    ("from-junk-after-greater", build(from_="From: <sip:a@example.com> junk;tag=1"), "from_tag"),
    ("from-empty", build(from_="From:"), "from_tag"),
    ("from-bad-param-name", build(from_="From: <sip:a@example.com>;t@g=1"), "from_tag"),
    ("to-unterminated-quote", build(to='To: "Bob <sip:b@example.com>'), "to_tag"),
    ("to-less-than-without-greater", build(to="To: Bob <sip:b@example.com"), "to_tag"),
    ("to-only-params", build(to="To: ;tag=1"), "to_tag"),
]


@pytest.mark.parametrize(("data", "where"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_invalid_message_raises_sip_parse_error(data: bytes, where: str | None) -> None:
    if where is None:
        with pytest.raises(SipParseError) as caught:
            parse_message(data)
    else:
        message = parse_message(data)  # the framing is fine: the error is in one header
        with pytest.raises(SipParseError) as caught:
            ACCESSORS[where](message)
    reason = caught.value.reason
    assert reason and reason.strip() == reason
    assert "\r" not in reason and "\n" not in reason and len(reason) < 60


def test_failed_accessor_keeps_failing_and_other_accessors_still_work() -> None:
    message = parse_message(build(cseq="CSeq: x INVITE"))
    for _ in range(2):
        with pytest.raises(SipParseError):
            message.cseq  # noqa: B018
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert message.from_tag == "1928301774"


def test_missing_headers_read_as_none() -> None:
    message = parse_message(crlf("BYE sip:b@example.com SIP/2.0", "X-Other: 1"))
    assert (message.call_id, message.cseq, message.from_tag, message.to_tag, message.top_via) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert message.values("via") == []
    assert message.first_value("route") is None


# -- typed header views on their own ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 INVITE", (1, "INVITE")),
        ("  0042\t BYE ", (42, "BYE")),
        ("2147483647 ACK", (2147483647, "ACK")),
        ("7 x-custom.method!", (7, "x-custom.method!")),
    ],
)
def test_parse_cseq_valid(text: str, expected: tuple[int, str]) -> None:
    assert parse_cseq(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "INVITE", "1", "-1 INVITE", "+1 INVITE", "1e3 INVITE", "2147483648 BYE", "1 IN VITE"],
)
def test_parse_cseq_invalid(text: str) -> None:
    with pytest.raises(SipParseError, match="CSeq"):
        parse_cseq(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", ["a"]),
        ("  a  ", ["a"]),
        ("a, b,c", ["a", "b", "c"]),
        ('"x, y" <sip:a>, <sip:b,c>', ['"x, y" <sip:a>', "<sip:b,c>"]),
        ('"q \\", still quoted" <sip:a>, b', ['"q \\", still quoted" <sip:a>', "b"]),
        ('a;p="1,2", b', ['a;p="1,2"', "b"]),
    ],
)
def test_split_header_values(text: str, expected: list[str]) -> None:
    assert split_header_values(text) == expected


@pytest.mark.parametrize("text", ["a,,b", ",a", "a,", '"a, b', "<sip:a, b", "a, <b"])
def test_split_header_values_invalid(text: str) -> None:
    with pytest.raises(SipParseError):
        split_header_values(text)


@pytest.mark.parametrize(
    ("text", "uri", "params"),
    [
        ("<sip:a@b>", "sip:a@b", {}),
        ("sip:a@b;tag=1;x", "sip:a@b", {"tag": "1", "x": None}),
        ('"A <B>, \\"C\\"" <sips:a@b;lr>;TAG=Xy', "sips:a@b;lr", {"tag": "Xy"}),
        ("Bob <tel:+1555>;tag=t", "tel:+1555", {"tag": "t"}),
        (" <sip:a@[::1]:5060> ; tag = 9 ", "sip:a@[::1]:5060", {"tag": "9"}),
        ('<sip:a@b>;q="x;y";tag=t', "sip:a@b", {"q": '"x;y"', "tag": "t"}),
    ],
)
def test_name_addr_parse(text: str, uri: str, params: dict[str, str | None]) -> None:
    value = NameAddr.parse(text)
    assert (value.uri, value.params) == (uri, params)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@atlanta.example.com", ("sip", "alice", "atlanta.example.com", None, {})),
        (
            "SIP:Host.Example.COM:5070;LR;Transport=udp",
            ("sip", None, "host.example.com", 5070, {"lr": None, "transport": "udp"}),
        ),
        ("sips:u:pw@[2001:DB8::1]:5061?subject=x", ("sips", "u:pw", "[2001:db8::1]", 5061, {})),
        ("sip:a%40b@c_d.example.com", ("sip", "a%40b", "c_d.example.com", None, {})),
        ("mailto:someone@example.com", ("mailto", None, "", None, {})),
    ],
)
def test_uri_parse(text: str, expected: tuple[object, ...]) -> None:
    uri = Uri.parse(text)
    assert (uri.scheme, uri.user, uri.host, uri.port, uri.params) == expected


@pytest.mark.parametrize(
    ("via", "source"),
    [
        ("SIP/2.0/UDP h.example.com", ("h.example.com", 5060)),
        ("SIP/2.0/UDP h.example.com:5070", ("h.example.com", 5070)),
        ("SIP/2.0/UDP h.example.com:5070;rport", ("h.example.com", 5070)),
        ("SIP/2.0/UDP h.example.com;received=192.0.2.7", ("192.0.2.7", 5060)),
        ("SIP/2.0/UDP h.example.com:5070;received=192.0.2.7;rport=6000", ("192.0.2.7", 6000)),
        ("SIP/2.0/UDP [2001:db8::1]:5070;rport=6001", ("2001:db8::1", 6001)),
        ("SIP/2.0/UDP h;received=[2001:db8::9];rport=6002", ("2001:db8::9", 6002)),
    ],
)
def test_via_response_address(via: str, source: tuple[str, int]) -> None:
    assert Via.parse(via).response_address() == source


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP h.example.com",
        "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK1;rport;received=192.0.2.1",
        "sip / 2.0 / udp H.EXAMPLE.COM : 5062 ; Branch = z9hG4bK2 ; RPORT",
    ],
)
def test_via_str_parses_back_to_the_same_via(text: str) -> None:
    via = Via.parse(text)
    assert Via.parse(str(via)) == via
    assert str(via).startswith("SIP/2.0/")


# -- rewriting ---------------------------------------------------------------------------------


def keys(message: SipMessage) -> list[str]:
    return [entry[0] for entry in message.headers]


def test_push_front_puts_the_new_via_on_top() -> None:
    message = parse_message(TORTUOUS_INVITE)
    assert message.top_via is not None  # cached before the push
    message.push_front("via", "Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKssnew")
    assert via_summary(message.top_via) == ("UDP", "192.0.2.1", 5060, "z9hG4bKssnew")
    assert len(message.values("via")) == 4
    out = message.to_bytes()
    pushed = out.index(b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKssnew\r\n")
    assert pushed < out.index(b"Via  :")
    for line in STRANGE_UNKNOWN_LINES:
        assert line.encode("latin-1") in out
    assert parse_message(out).top_via == message.top_via


def test_push_front_without_any_of_its_kind() -> None:
    message = parse_message(BASIC_INVITE)
    message.push_front("record-route", "Record-Route", "<sip:192.0.2.1;lr>", after="call-id")
    assert keys(message)[keys(message).index("call-id") + 1] == "record-route"
    message.push_front("record-route", "Record-Route", "<sip:192.0.2.2;lr>")
    assert message.values("record-route") == ["<sip:192.0.2.2;lr>", "<sip:192.0.2.1;lr>"]
    bare = parse_message(crlf(START))
    bare.push_front("via", "Via", "SIP/2.0/UDP h;branch=z9hG4bKonly", after="absent")
    assert bare.to_bytes() == crlf(START, "Via: SIP/2.0/UDP h;branch=z9hG4bKonly")


def test_pop_front_removes_the_first_of_several_values_in_one_header() -> None:
    message = parse_message(BASIC_RESPONSE)
    first = message.top_via
    assert first is not None and first.host == "192.0.2.1"
    popped = message.pop_front("via")
    assert popped == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKss0011"
    assert message.count("via") == 1
    via = message.top_via
    assert via is not None
    assert via.branch == "z9hG4bK776asdhds"
    assert via.response_address() == ("192.0.2.10", 5071)
    out = message.to_bytes()
    assert b"192.0.2.1:5060" not in out
    assert parse_message(out).top_via == via
    assert message.pop_front("via") is not None
    assert message.top_via is None
    assert message.pop_front("via") is None


def test_pop_front_across_headers_and_with_quoted_commas() -> None:
    message = parse_message(
        build(
            via='Via: SIP/2.0/UDP a;x="1, 2";branch=z9hG4bKa',
            extra=("Via: SIP/2.0/UDP b;branch=z9hG4bKb, SIP/2.0/UDP c;branch=z9hG4bKc",),
        )
    )
    assert message.pop_front("via") == 'SIP/2.0/UDP a;x="1, 2";branch=z9hG4bKa'
    assert [Via.parse(v).host for v in message.values("via")] == ["b", "c"]
    assert message.pop_front("via") == "SIP/2.0/UDP b;branch=z9hG4bKb"
    assert message.top_via is not None and message.top_via.host == "c"


def test_pop_front_route_keeps_the_rest() -> None:
    message = parse_message(build(extra=('Route: <sip:p1.example.com;lr>, "Two, Inc" <sip:p2.example.com;lr>',)))
    assert message.pop_front("route") == "<sip:p1.example.com;lr>"
    assert message.values("route") == ['"Two, Inc" <sip:p2.example.com;lr>']
    assert message.pop_front("route") == '"Two, Inc" <sip:p2.example.com;lr>'
    assert message.count("route") == 0


def test_replace_front_keeps_further_values_and_refreshes_top_via() -> None:
    message = parse_message(BASIC_RESPONSE)
    assert message.top_via is not None
    message.replace_front("via", "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKrepl;received=192.0.2.5")
    via = message.top_via
    assert via is not None and via.host == "192.0.2.99"
    assert len(message.values("via")) == 2
    assert Via.parse(message.values("via")[1]).branch == "z9hG4bK776asdhds"
    again = parse_message(message.to_bytes())
    assert [Via.parse(v) for v in again.values("via")] == [Via.parse(v) for v in message.values("via")]


def test_replace_front_on_an_absent_header_does_not_touch_others() -> None:
    message = parse_message(BASIC_INVITE)
    before = list(message.headers)
    with pytest.raises(KeyError):
        message.replace_front("record-route", "<sip:x;lr>")
    assert message.headers == before


def test_set_replaces_in_place_or_appends() -> None:
    message = parse_message(TORTUOUS_INVITE)
    message.set("max-forwards", "Max-Forwards", "67")
    assert message.first("max-forwards") == "67"
    assert b"\r\nMaX-fOrWaRdS: 67\r\n" in message.to_bytes()  # the name as the sender wrote it
    message.set("x-added", "X-Added", "yes")
    assert keys(message)[-1] == "x-added"
    out = message.to_bytes()
    assert out.endswith(b"\r\nX-Added: yes\r\n\r\n" + TORTUOUS_BODY)
    for line in STRANGE_UNKNOWN_LINES:
        assert line.encode("latin-1") in out


@pytest.mark.parametrize(
    ("key", "name", "value", "read", "expected"),
    [
        ("cseq", "CSeq", "2 BYE", lambda m: m.cseq, (2, "BYE")),
        ("call-id", "Call-ID", "new@example.com", lambda m: m.call_id, "new@example.com"),
        ("from", "From", "<sip:a@example.com>;tag=newfrom", lambda m: m.from_tag, "newfrom"),
        ("to", "To", "<sip:b@example.com>;tag=newto", lambda m: m.to_tag, "newto"),
        ("via", "Via", "SIP/2.0/UDP n;branch=z9hG4bKn", lambda m: m.top_via.branch, "z9hG4bKn"),
    ],
)
def test_rewrites_refresh_cached_values(
    key: str, name: str, value: str, read: Callable[[SipMessage], object], expected: object
) -> None:
    for rewrite in ("set", "replace_front", "push_front"):
        message = parse_message(BASIC_INVITE)
        summary(message)  # fill every cache first
        if rewrite == "set":
            message.set(key, name, value)
        elif rewrite == "replace_front":
            message.replace_front(key, value)
        else:
            message.pop_front(key)
            message.push_front(key, name, value)
        assert read(message) == expected, rewrite
        assert read(parse_message(message.to_bytes())) == expected, rewrite


def test_to_bytes_after_every_rewrite_keeps_unknown_lines_and_body() -> None:
    message = parse_message(TORTUOUS_INVITE)
    message.push_front("via", "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKss1")
    message.pop_front("via")
    message.pop_front("via")
    replaced = "SIP/2.0/TCP proxy.example.com:5061;branch=z9hG4bKsecond;received=1.2.3.4"
    message.replace_front("via", replaced)
    message.set("max-forwards", "Max-Forwards", "10")
    out = message.to_bytes()
    folded = "NewFangledHeader:   newfangled value continued newfangled value"
    for line in (*STRANGE_UNKNOWN_LINES, folded):
        assert b"\r\n" + line.encode("latin-1") + b"\r\n" in out
    assert out.endswith(b"\r\n\r\n" + TORTUOUS_BODY)
    again = parse_message(out)
    assert [Via.parse(v) for v in again.values("via")] == [
        Via.parse(replaced),
        Via.parse("SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKthird"),
    ]


def test_start_line_is_normalised_on_output() -> None:
    assert parse_message(crlf("sip/2.0 200 OK", VIA)).to_bytes().startswith(b"SIP/2.0 200 OK\r\n")
    request = parse_message(crlf("invite sip:a@example.com sip/2.0", VIA))
    assert request.to_bytes().startswith(b"invite sip:a@example.com SIP/2.0\r\n")
    assert repr(request).startswith("<SipMessage 'invite sip:a@example.com SIP/2.0'")


def test_rewrites_leave_parsed_values_of_the_same_text_alone() -> None:
    """Via and NameAddr parsing is memoized: a rewrite must never change a cached value."""
    message = parse_message(BASIC_RESPONSE)
    via = message.top_via
    assert via is not None
    before = dict(via.params)
    message.replace_front("via", "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKother;received=192.0.2.5")
    message.pop_front("via")
    message.push_front("via", "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKss0011")
    again = parse_message(BASIC_RESPONSE).top_via
    assert again is not None and again.params == before
    assert parse_message(BASIC_RESPONSE).from_tag == "1928301774"
