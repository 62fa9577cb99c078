"""SIP message rewriting and parsing edges that mutation testing found untested."""

from __future__ import annotations

import pytest

from sipshadow.sip import SipParseError, parse_message
from tests.unit.sip_messages import crlf

ROUTES = crlf(
    "INVITE sip:192.0.2.1:5060;lr SIP/2.0",
    "Route: <sip:a.example.com;lr>",
    "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.11;branch=z9hG4bK2",
    "Via: SIP/2.0/UDP 192.0.2.12;branch=z9hG4bK3",
    "Route: <sip:b.example.com;lr>, <sip:c.example.com;lr>, <sip:d.example.com>",
    "Call-ID: routes",
    "Content-Length: 0",
)


def test_pop_back_takes_the_last_value_of_the_last_header_and_keeps_the_rest() -> None:
    """§16.4: a strict router's target is the last Route value."""
    message = parse_message(ROUTES)
    assert message.pop_back("route") == "<sip:d.example.com>"
    assert message.values("route") == ["<sip:a.example.com;lr>", "<sip:b.example.com;lr>", "<sip:c.example.com;lr>"]
    assert b"Route: <sip:b.example.com;lr>, <sip:c.example.com;lr>\r\n" in message.to_bytes()
    assert message.pop_back("route") == "<sip:c.example.com;lr>"
    assert message.pop_back("route") == "<sip:b.example.com;lr>"
    assert message.count("route") == 1
    assert message.pop_back("route") == "<sip:a.example.com;lr>"
    assert message.count("route") == 0 and b"Route" not in message.to_bytes()
    assert message.pop_back("route") is None
    assert [entry[0] for entry in message.headers] == ["via", "via", "call-id", "content-length"]


def test_pop_back_finds_a_header_that_is_the_very_first_line() -> None:
    message = parse_message(ROUTES)
    assert message.headers[0][0] == "route"
    message.pop_back("route")
    message.pop_back("route")
    message.pop_back("route")
    assert message.pop_back("route") == "<sip:a.example.com;lr>"


def test_pop_back_of_a_cached_header_refreshes_its_typed_value() -> None:
    message = parse_message(ROUTES)
    assert message.top_via is not None and message.top_via.branch == "z9hG4bK1"
    assert message.pop_back("via") == "SIP/2.0/UDP 192.0.2.12;branch=z9hG4bK3"
    assert message.pop_back("via") == "SIP/2.0/UDP 192.0.2.11;branch=z9hG4bK2"
    assert message.top_via.branch == "z9hG4bK1"
    assert message.pop_back("via") == "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK1"
    assert message.top_via is None


def test_pop_back_of_an_absent_header_changes_nothing() -> None:
    message = parse_message(ROUTES)
    before = message.to_bytes()
    assert message.pop_back("record-route") is None
    assert message.to_bytes() == before


def test_a_malformed_route_list_makes_pop_back_raise() -> None:
    message = parse_message(crlf("INVITE sip:x SIP/2.0", "Route: <sip:a>, , <sip:b>", "Call-ID: x"))
    with pytest.raises(SipParseError):
        message.pop_back("route")


def test_a_content_length_of_nine_digits_is_read_and_ten_is_refused() -> None:
    nine = parse_message(crlf("OPTIONS sip:x SIP/2.0", "Content-Length: 000000005", body=b"hello, and more"))
    nine.frame_datagram()
    assert nine.body == b"hello"
    ten = parse_message(crlf("OPTIONS sip:x SIP/2.0", "Content-Length: 0000000005", body=b"hello"))
    with pytest.raises(SipParseError, match=r"^Bad Content-Length$"):
        ten.frame_datagram()


def test_the_last_at_sign_ends_the_user_part_of_a_uri() -> None:
    from sipshadow.sip.headers import Uri

    uri = Uri.parse("sip:a@b@example.com:5062;transport=udp")
    assert (uri.user, uri.host, uri.port, uri.params) == ("a@b", "example.com", 5062, {"transport": "udp"})
    assert Uri.parse("sip:user;x=1?y@example.com").user == "user;x=1?y"


@pytest.mark.parametrize(
    ("via", "address"),
    [
        ("SIP/2.0/UDP h.example.com;maddr=[2001:db8::9]", ("2001:db8::9", 5060)),
        ("SIP/2.0/UDP h.example.com:5070;maddr=192.0.2.9", ("192.0.2.9", 5070)),
        ("SIP/2.0/UDP [2001:db8::1];received=[2001:db8::2];rport=7000", ("2001:db8::2", 7000)),
        ("SIP/2.0/UDP [2001:db8::1]:5071", ("2001:db8::1", 5071)),
    ],
)
def test_where_a_response_goes_with_ipv6_and_maddr(via: str, address: tuple[str, int]) -> None:
    from sipshadow.sip import Via

    assert Via.parse(via).response_address() == address


def test_replace_front_keeps_the_rest_of_a_list_header_even_after_a_rewrite() -> None:
    message = parse_message(ROUTES)
    message.replace_front("via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa")
    message.replace_front("via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb")
    assert message.values("via") == [
        "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb",
        "SIP/2.0/UDP 192.0.2.11;branch=z9hG4bK2",
        "SIP/2.0/UDP 192.0.2.12;branch=z9hG4bK3",
    ]


def test_replace_front_of_a_single_valued_header_replaces_it_whole() -> None:
    message = parse_message(crlf("MESSAGE sip:x SIP/2.0", "Subject: hello, world", "Call-ID: c"))
    message.replace_front("subject", "bye")
    assert message.first("subject") == "bye"
    with pytest.raises(KeyError) as missing:
        message.replace_front("priority", "urgent")
    assert missing.value.args == ("priority",)


def test_an_empty_quoted_string_opens_and_closes_in_a_header_list() -> None:
    from sipshadow.sip import split_header_values

    assert split_header_values('"" <sip:a@example.com>, <sip:b@example.com>') == [
        '"" <sip:a@example.com>',
        "<sip:b@example.com>",
    ]


def test_a_quoted_display_name_may_touch_its_angle_bracket() -> None:
    from sipshadow.sip import NameAddr

    name_addr = NameAddr.parse('"Alice"<sip:alice@example.com>;tag=1')
    assert (name_addr.uri, name_addr.tag) == ("sip:alice@example.com", "1")


def test_a_head_with_mixed_crlf_and_bare_lf_line_ends_keeps_every_header() -> None:
    data = b"OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: mixed\nCSeq: 1 OPTIONS\n\nbody"
    message = parse_message(data)
    assert [entry[0] for entry in message.headers] == ["via", "call-id", "cseq"]
    assert message.first("via") == "SIP/2.0/UDP h;branch=z9hG4bK1" and message.body == b"body"


def test_push_front_with_none_of_its_kind_goes_after_its_anchor_or_first() -> None:
    message = parse_message(crlf("INVITE sip:x SIP/2.0", "Call-ID: c", "CSeq: 1 INVITE", "To: <sip:x>"))
    message.push_front("record-route", "Record-Route", "<sip:a;lr>", after="call-id")
    message.push_front("via", "Via", "SIP/2.0/UDP h;branch=z9hG4bK1")
    assert [entry[0] for entry in message.headers] == ["via", "call-id", "record-route", "cseq", "to"]
