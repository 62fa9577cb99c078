"""The parser's fast paths read exactly what the grammar reads, or leave the text to it.

The head's lines (unfolded only when a continuation line is there), Via's sent-by, CSeq and
the status line each have a fast path for the common spelling
(string operations, no regular expression) in front of the grammar. A fast path that accepted
what the grammar refuses, or read a field differently, would make a replica built one way
decide otherwise than one built the other way. So for generated text, spellings close to the
common one and far from it: whatever the fast path accepts, the grammar accepts with the same
fields, and the parse as a whole gives what the grammar alone gives.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.sip import SipMessage, SipParseError, parse_message
from sipshadow.sip.headers import _CSEQ_RE, _SENT_PROTOCOL_RE, _plain_sent_by, parse_cseq
from sipshadow.sip.message import _FOLD_RE, _STATUS_RE, _parse_folded, _with_start_line, split_head

#: Characters that matter to the three grammars, and a few that must never pass.
_TRICKY = "SIPsip/2.0 \t:;[]-_.abcXYZ0123456789²¹é\x00"
_pieces = st.text(alphabet=_TRICKY, max_size=12)
_digits = st.text(alphabet="0123456789²", min_size=0, max_size=12)


@st.composite
def sent_by_heads(draw: st.DrawFn) -> str:
    """`SIP/2.0/transport host[:port]`, mostly close to the common spelling, sometimes not."""
    prefix = draw(st.sampled_from(["SIP/2.0/", "sip/2.0/", "SIP/2.0 /", " SIP/2.0/", "SIP/2.1/", ""]))
    transport = draw(st.sampled_from(["UDP", "tcp", "TLS", "SCTP", "", "U-P", "UD P"]) | _pieces)
    space = draw(st.sampled_from([" ", "  ", "\t", "", " \t"]))
    host = draw(st.sampled_from(["127.0.0.1", "host.example.com", "a-b.c", "...", "-", "[::1]", "h_st", ""]) | _pieces)
    ports = st.sampled_from(["", ":5060", ":0", ":65535", ":123456", ":", " : 5060", ":5o6"])
    port = draw(ports | _digits.map(":".__add__))
    tail = draw(st.sampled_from(["", " ", "\t", "x"]))
    return prefix + transport + space + host + port + tail


@settings(max_examples=3000)
@given(sent_by_heads())
def test_a_via_sent_by_read_fast_is_what_the_grammar_reads(head: str) -> None:
    fast = _plain_sent_by(head)
    if fast is None:
        return  # the grammar reads it, as it always did
    match = _SENT_PROTOCOL_RE.match(head)
    assert match is not None, head
    assert fast == (match.group(1), match.group(2), match.group(3) or ""), head


def grammar_cseq(text: str) -> tuple[int, str] | None:
    match = _CSEQ_RE.match(text)
    if match is None or int(match.group(1)) >= 2**31:
        return None
    return int(match.group(1)), match.group(2)


@settings(max_examples=3000)
@given(
    st.sampled_from(["", " ", "\t"]),
    _digits,
    st.sampled_from([" ", "  ", "\t", ""]),
    st.sampled_from(["INVITE", "ACK", "BYE", "invite", "FOO", "IN VITE", ""]) | _pieces,
    st.sampled_from(["", " ", "x"]),
)
def test_a_cseq_read_fast_is_what_the_grammar_reads(lead: str, digits: str, space: str, method: str, tail: str) -> None:
    text = lead + digits + space + method + tail
    expected = grammar_cseq(text)
    try:
        assert parse_cseq(text) == expected, text
    except SipParseError:
        assert expected is None, text


def grammar_status(line: str) -> tuple[int, str] | None:
    match = _STATUS_RE.match(line)
    return None if match is None else (int(match.group(1)), match.group(2) or "")


@settings(max_examples=3000)
@given(
    st.sampled_from(["SIP/2.0 ", "sip/2.0 ", "SIP/2.0  ", "SIP/2.1 ", "SIP/2.0"]),
    _digits,
    st.sampled_from(["", " ", "  ", "x", " OK", " Ringing ", " \x00", "\t"]) | _pieces,
)
def test_a_status_line_read_fast_is_what_the_grammar_reads(version: str, code: str, rest: str) -> None:
    line = version + code + rest
    expected = grammar_status(line)
    try:
        message = _with_start_line(line, [], b"")
    except SipParseError:
        assert expected is None, line
        return
    assert (message.status, message.reason) == expected, line


def grammar_parse(data: bytes) -> SipMessage:
    """`parse_message` as it was before its fast path: unfold, check, then read every line."""
    text, body = split_head(data)  # unchanged by the fast path
    if "\r\n " in text or "\r\n\t" in text:
        text = _FOLD_RE.sub(" ", text)
    breaks = text.count("\r\n")
    if text.count("\n") != breaks or text.count("\r") != breaks:  # checked on the unfolded text
        raise SipParseError("Bare CR or LF in header")
    return _parse_folded(text, body)  # every line read whole (unfolding again changes nothing)


def outcome(parse: Callable[[bytes], SipMessage], data: bytes) -> tuple[object, ...]:
    try:
        message = parse(data)
    except SipParseError as error:
        return ("error", error.status, str(error))
    return (message.start_line(), message.headers, message.body)


_LINES = st.sampled_from([
    "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "From: <sip:a@b>;tag=1", "To: <sip:b@c>", "Call-ID: x", "CSeq: 1 INVITE",
    " folded", "\tfolded", "NoColon", " : after", "Via\xa0: x", "Bad Name: x", "X:\r", "Y: a\nb", "Z:", ": empty",
    "Content-Length: 0", "NoColon\r\n : after", "Bad\r\n Name: x", "Via: a\r\n\tb",
]) | st.text(alphabet="ab: \t\r\n;", max_size=8)  # fmt: skip


@settings(max_examples=3000)
@given(
    st.sampled_from(["INVITE sip:b@c SIP/2.0", "SIP/2.0 180 Ringing", "sip/2.0 200 OK", "BYE x", ""]),
    st.lists(_LINES, max_size=6),
    st.sampled_from(["\r\n\r\n", "\r\n\r\nbody", "\n\n", "\r\n"]),
)
def test_a_message_read_fast_is_what_the_grammar_reads(start: str, lines: list[str], end: str) -> None:
    data = "\r\n".join([start, *lines]).encode("latin-1") + end.encode()
    assert outcome(parse_message, data) == outcome(grammar_parse, data), data
