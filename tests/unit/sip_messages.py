"""Sample SIP messages for the parser tests: valid but tortuous ones, in the spirit of RFC 4475.

Written for this project (not copied from the RFC). Every message is built from lines joined
with CRLF so the bytes on the wire are exact; `crlf()` does the joining.
"""

from __future__ import annotations


def crlf(*lines: str, body: bytes = b"") -> bytes:
    """Lines joined with CRLF, the empty line that ends the headers, then the body."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


#: A plain, well-formed INVITE: the base for mutations and hand-made variants.
BASIC_INVITE = crlf(
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5070;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    "To: Bob <sip:bob@biloxi.example.com>",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com>",
    "Content-Length: 0",
)

#: A 180 from the callee, two Vias deep (the second one in the same header).
BASIC_RESPONSE = crlf(
    "SIP/2.0 180 Ringing",
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKss0011, "
    "SIP/2.0/UDP pc33.atlanta.example.com:5070;branch=z9hG4bK776asdhds"
    ";received=192.0.2.10;rport=5071",
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Content-Length: 0",
)

#: Lines of unknown headers whose bytes must come back unchanged by `to_bytes()`.
STRANGE_UNKNOWN_LINES = (
    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    "X-Empty:",
    "X-Spaces   :   lots   of   space   ",
    'X-Quoted: "a, b; c <d> \\" e", \'single\'',
    "X-Angles: <<<>>> >< <",
    "X-Utf8: caf\xc3\xa9 \xe2\x82\xac (UTF-8 bytes, kept as they came)",
    "X-Tabs: a\tb\t\tc\t",
    "X-Colons: a:b::c:::",
    "x-lower-case-name: Value",
    "X-UPPER-CASE-NAME: VALUE",
    "X-Token.Chars!%*_+`'~-: token chars in the name",
)

#: Wide-ranging legal oddities in one INVITE (after RFC 4475 §3.1.1.1, our own words).
#: Folded header lines, LWS around ':' and '/', mixed case, compact forms, quoted names with
#: commas, escaped quotes and '<', IPv6 references, parameters in odd case, a binary body.
TORTUOUS_BODY = b"v=0\r\n\x00\x01\x02\xff\xfe\r\n\r\nbinary tail \x80\x81"
TORTUOUS_INVITE = crlf(
    "INVITE sip:bob@[2001:db8::20]:5062;Transport=UDP;unknownParam SIP/2.0",
    "tO :",
    " <sip:bob@biloxi.example.com> ;   TAG    = 8321234356",
    'fRoM   : "Alice \\"the Great\\" <A>, Esq."       <sip:alice@atlanta.example.com>',
    "  ;",
    "  Tag = 9fxced76sl",
    "MaX-fOrWaRdS: 0068",
    "cAlL-iD: tortuous.9f8e7d@atlanta.example.com",
    "cSeQ: 0009",
    "\tINVITE",
    "Via  : SIP  /   2.0",
    " /UDP",
    "    [2001:DB8::10]:5070;RPort;Branch=z9hG4bKtortuous1",
    "v: SIP/2.0/TCP proxy.example.com:5061 ;branch=z9hG4bKsecond, SIP / 2.0 / UDP 192.0.2.5 ; bRaNcH = z9hG4bKthird",
    "s :",
    "NewFangledHeader:   newfangled value",
    " continued newfangled value",
    *STRANGE_UNKNOWN_LINES,
    'm: "Quoted, Contact" <sip:alice@[2001:db8::10]:5070;transport=udp>;expires=60',
    "c: application/sdp",
    f"l: {len(TORTUOUS_BODY)}",
    body=TORTUOUS_BODY,
)

#: Every compact form in one request (RFC 3261 §7.3.3 and later RFCs).
COMPACT_INVITE = crlf(
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    "v: SIP/2.0/UDP host.example.com;branch=z9hG4bKcompact",
    "f: <sip:alice@atlanta.example.com>;tag=compact-from",
    "t: <sip:bob@biloxi.example.com>;tag=compact-to",
    "i: compact@host.example.com",
    "CSeq: 7 INVITE",
    "m: <sip:alice@host.example.com>",
    "e: gzip",
    "c: application/sdp",
    "s: compact forms",
    "k: timer",
    "o: presence",
    "u: presence, dialog",
    "r: <sip:carol@example.com>",
    "b: <sip:alice@atlanta.example.com>",
    "x: 1800;refresher=uac",
    "a: *;audio",
    "j: *;video",
    "d: proxy",
    "y: Zm9v",
    "n: <https://example.com/cert>;alg=rsa-sha1",
    "l: 0",
)

#: A 200 with an empty reason phrase (the SP before it is still there, §25.1).
EMPTY_REASON_RESPONSE = crlf(
    "SIP/2.0 200 ",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKempty",
    "From: sip:alice@atlanta.example.com;tag=no-brackets",
    "To: sip:bob@biloxi.example.com;tag=also-none",
    "Call-ID: empty-reason@192.0.2.1",
    "CSeq: 2 BYE",
    "Content-Length: 0",
)

#: All valid samples, for the mutation and round-trip properties.
VALID_MESSAGES = {
    "basic-invite": BASIC_INVITE,
    "basic-response": BASIC_RESPONSE,
    "tortuous-invite": TORTUOUS_INVITE,
    "compact-invite": COMPACT_INVITE,
    "empty-reason": EMPTY_REASON_RESPONSE,
}
