"""What a proxy must do with each RFC 4475 torture message, and how that shows on the wire.

One row per file of `tests/data/rfc4475/` (a copy of `../shared/rfc4475/`). `rfc` is the
verdict in the RFC's own words (the section the message comes from, shortened); `outcome` is
what the ALG must visibly do with it, given its policy (RFC 3261 §16.3 request validation,
§8.2 for what it answers itself, and a dialog table that answers 481 to an in-dialog request
it does not know); `note` says how the verdict became that outcome when it is not a straight
reading.

A row's `sender` is the sent-by of the message's top Via (the datagram comes from that address,
so a reply to the Via and a reply to the source land on the same socket), or `MEMBER` for the
responses, which come from the cluster member.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMBER = "member"


@dataclass(frozen=True)
class Forwarded:
    """The member receives the request once, under the ALG's Via, Max-Forwards decremented."""

    start_line: str | None = None  # the forwarded Request-Line; None: the file's own
    keep: tuple[str, ...] = ()  # header lines (by their start) that must reach the member byte for byte
    absent: tuple[bytes, ...] = ()  # octets that must not reach the member (any case)
    no_headers: tuple[str, ...] = ()  # header fields the forwarded request must not have

    def describe(self) -> str:
        text = "forwarded to the member"
        if self.start_line:
            text += f" as `{self.start_line}`"
        if self.keep:
            text += "; " + ", ".join(f"`{line.rstrip(':')}`" for line in self.keep) + " unchanged"
        if self.absent:
            text += "; without " + ", ".join(f"`{octets.decode()}`" for octets in self.absent)
        if self.no_headers:
            text += "; no " + ", ".join(f"`{name}`" for name in self.no_headers) + " header field"
        return text


@dataclass(frozen=True)
class Answered:
    """The ALG answers the client itself (and forwards nothing)."""

    status: int
    also_ok: tuple[int, ...] = ()  # other codes the RFC accepts
    unsupported: tuple[str, ...] = ()  # option tags the Unsupported header must list
    not_listed: tuple[str, ...] = ()  # option tags it must not list

    def describe(self) -> str:
        text = f"answers {self.status}" + "".join(f" (or {code})" for code in self.also_ok)
        if self.unsupported:
            text += " with `Unsupported: " + ", ".join(self.unsupported) + "`"
        return text


@dataclass(frozen=True)
class Dropped:
    """Nothing leaves the ALG; the named status counter moves by one."""

    counter: str

    def describe(self) -> str:
        return f"drops it, counted in `{self.counter}`"


Outcome = Forwarded | Answered | Dropped


@dataclass(frozen=True)
class Case:
    file: str
    section: str
    title: str
    rfc: str
    outcome: Outcome
    sender: str
    note: str = ""


FORWARD = Forwarded()
MAY_REJECT = "the RFC lets an element reject it or accept it liberally; a proxy accepts and forwards"
STRICT_ENTRY = (
    "the RFC finds rejecting it reasonable; the ALG is the cluster's entry, so it rejects malformed start lines "
    "rather than repair them for every member behind it"
)

CASES: tuple[Case, ...] = (
    # -- 3.1.1 valid messages ---------------------------------------------------------------
    Case("wsinv.dat", "3.1.1.1", "A Short Tortuous INVITE",
         "\"All elements should treat this as a well-formed request\"; proxies forward unknown headers unchanged",
         Answered(481), "192.0.2.2:5060",
         "valid, but it carries a To tag (`1918181833n`) for a dialog the ALG never saw: in-dialog answer 481"),
    Case("intmeth.dat", "3.1.1.2", "Wide Range of Valid Characters",
         "well formed; \"If this unusual URI has been defined at a proxy, the proxy will forward this request "
         "normally\"",
         Forwarded(keep=("To:", "From:", "Call-ID:", "extensionHeader-")), "host1.example.com:5060",
         "the URIs are the cluster's to define, not the load balancer's: it forwards; a member may 404"),
    Case("esc01.dat", "3.1.1.3", "Valid Use of the % Escaping Mechanism",
         "\"A parser must accept this as a well-formed message\"",
         Forwarded(keep=("To:", "From:")), "host5.example.net:5060"),
    Case("escnull.dat", "3.1.1.4", "Escaped Nulls in URIs",
         "\"The message is well formed - parsers must accept this message\"",
         Forwarded(keep=("To:", "From:", "Contact:")), "host5.example.com:5060"),
    Case("esc02.dat", "3.1.1.5", "Use of % When It Is Not an Escape",
         "well formed; \"A proxy would forward or reject the message depending on what the Request-URI meant to "
         "it\"", Forwarded(keep=("C%6Fntact:",)), "host.example.com:5060",
         "unknown method, out of dialog: the Request-URI means a member, so it is forwarded"),
    Case("lwsdisp.dat", "3.1.1.6", "No LWS between Display Name and <",
         "\"Elements should accept this request as well formed\"",
         Forwarded(keep=("From:",)), "funky.example.com:5060"),
    Case("longreq.dat", "3.1.1.7", "Long Values in Header Fields",
         "\"This well-formed request contains header fields with many values and values that are very long\"",
         Forwarded(keep=("To:", "F:", "Call-ID:", "Unknown-LongLong")), "sip33.example.com:5060"),
    Case("dblreq.dat", "3.1.1.8", "Extra Trailing Octets in a UDP Datagram",
         "handle the REGISTER normally; \"If the element is a proxy choosing to forward the REGISTER, the INVITE "
         "octets would not appear in the forwarded request\"",
         Forwarded(absent=(b"INVITE sip:joe@example.com",)), "192.0.2.125:5060"),
    Case("semiuri.dat", "3.1.1.9", "Semicolon-Separated Parameters in URI User Part",
         "\"Receiving elements will accept this as a well-formed message\"", FORWARD, "192.0.2.1:5060"),
    Case("transports.dat", "3.1.1.10", "Varied and Unknown Transport Types",
         "\"Parsers must accept this message as well formed\"; process it as if the other Vias named UDP",
         FORWARD, "t1.example.com:5060"),
    Case("mpart01.dat", "3.1.1.11", "Multipart MIME Message",
         "\"Parsers must accept this message as well formed\"; the binary part holds NULs: frame it properly",
         Forwarded(keep=("Identity:", "Content-Type:")), "127.0.0.1:5070",
         "its Route (`sip:127.0.0.1:5080`, not the ALG) stays for the member; the body arrives byte for byte"),
    Case("unreason.dat", "3.1.1.12", "Unusual Reason Phrase",
         "\"This response is well formed. A parser must accept this message\"",
         Dropped("stray_responses"), MEMBER,
         "a response is relayed only down the ALG's own Via; this one's top Via is 192.0.2.198"),
    Case("noreason.dat", "3.1.1.13", "Empty Reason Phrase",
         "\"This well-formed response contains no reason phrase. A parser must accept this message\"",
         Dropped("stray_responses"), MEMBER, "top Via 192.0.2.105 is not the ALG's"),
    # -- 3.1.2 invalid messages -------------------------------------------------------------
    Case("badinv01.dat", "3.1.2.1", "Extraneous Header Field Separators",
         "\"should respond with a 400 Bad Request error\"", Answered(400), "192.0.2.15:5060"),
    Case("clerr.dat", "3.1.2.2", "Content Length Larger Than Message",
         "over UDP \"the receiving element should respond with a 400 Bad Request error\"",
         Answered(400), "host5.example.com:5060"),
    Case("ncl.dat", "3.1.2.3", "Negative Content-Length",
         "\"should respond with an error\"; over UDP the rest of the datagram is discarded",
         Answered(400), "192.0.2.53:5060"),
    Case("scalar02.dat", "3.1.2.4", "Request Scalar Fields with Overlarge Values",
         "\"should respond with a 400 Bad Request due to the CSeq error\"",
         Answered(400), "host129.example.com:5060"),
    Case("scalarlg.dat", "3.1.2.5", "Response Scalar Fields with Overlarge Values",
         "\"An element receiving this response will simply discard it\"",
         Dropped("malformed_responses"), MEMBER,
         "its CSeq number (> 2**32-1) does not parse, so it is malformed, not merely stray"),
    Case("quotbal.dat", "3.1.2.6", "Unterminated Quoted String in Display Name",
         "\"should return a 400 Bad Request error\" (an element could infer the quote)",
         Answered(400), "192.0.2.59:5050"),
    Case("ltgtruri.dat", "3.1.2.7", "<> Enclosing Request-URI",
         "\"reasonable always to reject\" with 400, or ignore the brackets; \"If the element forwards the "
         "request, it must not include the brackets\"",
         Answered(400), "192.0.2.5:5060", STRICT_ENTRY),
    Case("lwsruri.dat", "3.1.2.8", "Malformed SIP Request-URI (embedded LWS)",
         "\"should respond with a 400 Bad Request\"", Answered(400), "192.0.2.1:5060",
         "invalid before its To tag matters: 400, not 481"),
    Case("lwsstart.dat", "3.1.2.9", "Multiple SP Separating Request-Line Elements",
         "\"acceptable to reject this request as malformed\", or ignore the extra SP; if forwarded, \"it must not "
         "include these extra SP characters\"",
         Answered(400), "host1.example.com:5060", STRICT_ENTRY),
    Case("trws.dat", "3.1.2.10", "SP Characters at End of Request-Line",
         "\"acceptable to reject this request as malformed\", or ignore the trailing SP; if forwarded, \"it must "
         "not include these extra SP characters\"",
         Answered(400), "host1.examle.com:5060", STRICT_ENTRY),
    Case("escruri.dat", "3.1.2.11", "Escaped Headers in SIP Request-URI",
         "\"acceptable ... to reject this request with a 400\", or ignore the escaped headers; a proxy must not "
         "leave them in the forwarded Request-URI nor turn them into header fields",
         Answered(400), "host-of-the-hour.example.com:5060", STRICT_ENTRY),
    Case("baddate.dat", "3.1.2.12", "Invalid Time Zone in Date Header Field",
         "\"acceptable to reject ... (though an element shouldn't do that unless the contents of the Date header "
         "field were actually important to its processing)\"",
         Forwarded(keep=("Date:",)), "host.example.com:5060", "a proxy does not use Date: forwards it untouched"),
    Case("regbadct.dat", "3.1.2.13", "Failure to Enclose name-addr URI in <>",
         "\"reasonable ... to respond with a 400\"; a liberal element \"could infer the angle brackets\"",
         Forwarded(keep=("Contact:",)), "135.180.130.133:5060",
         MAY_REJECT + "; the Contact is the registrar's to judge"),
    Case("badaspec.dat", "3.1.2.14", "Spaces within addr-spec",
         "\"Parsers receiving this request must not break. It is reasonable to reject this request with a 400 "
         "... Elements attempting to be liberal may ignore the spaces\"",
         Forwarded(keep=("To:",)), "host4.example.com:5060", MAY_REJECT),
    Case("baddn.dat", "3.1.2.15", "Non-token Characters in Display Name",
         "\"reasonable always to reject this kind of error with a 400\"; a liberal proxy \"must not propagate "
         "the error into the request it forwards\"",
         Answered(400), "c.example.com:5060",
         "accepting would mean rewriting From and To, which a proxy leaves alone: reject"),
    Case("badvers.dat", "3.1.2.16", "Unknown Protocol Version",
         "\"should respond to the request with a 505 Version Not Supported error\"",
         Answered(505), "c.example.com:5060"),
    Case("mismatch01.dat", "3.1.2.17", "Start Line and CSeq Method Mismatch",
         "\"Any element receiving this request will respond with a 400 Bad Request\"",
         Answered(400), "host.example.com:5060"),
    Case("mismatch02.dat", "3.1.2.18", "Unknown Method with CSeq Method Mismatch",
         "\"should respond with a 501 Not Implemented. A 400 Bad Request is also acceptable, but choosing a 501 "
         "(particularly at proxies) has better future-proof characteristics\"",
         Answered(501, also_ok=(400,)), "host.example.net:5060"),
    Case("bigcode.dat", "3.1.2.19", "Overlarge Response Code",
         "\"An element receiving this response should simply drop it\"",
         Dropped("malformed_responses"), MEMBER, "status 4294967301 does not parse"),
    # -- 3.2 transaction layer --------------------------------------------------------------
    Case("badbranch.dat", "3.2.1", "Missing Transaction Identifier",
         "\"could reject the request with a 400 ... or it could fall back to the RFC 2543-style transaction "
         "identifier\"", FORWARD, "192.0.2.1:5060", "the ALG falls back (its stateless branch hashes the request)"),
    # -- 3.3 application layer --------------------------------------------------------------
    Case("insuf.dat", "3.3.1", "Missing Required Header Fields",
         "\"must not break because of the missing information. Ideally, it will respond with a 400\"",
         Answered(400), "192.0.2.95:5060"),
    Case("unkscm.dat", "3.3.2", "Request-URI with Unknown Scheme",
         "\"will reject it with a 416 Unsupported URI Scheme response\" (the To header is no routing hint)",
         Answered(416), "host9.example.com:5060"),
    Case("novelsc.dat", "3.3.3", "Request-URI with Known but Atypical Scheme",
         "\"If an element will never accept this scheme as meaningful in a Request-URI ... return a 416\"",
         Answered(416), "host9.example.com:5060", "the ALG routes sip, sips and tel only"),
    Case("unksm2.dat", "3.3.4", "Unknown URI Schemes in Header Fields",
         "\"Proxies should treat this message as they would any other request for this URI\" (a registrar "
         "would answer 400)", Forwarded(keep=("To:", "From:", "Contact:")), "192.0.2.21:5060"),
    Case("bext01.dat", "3.3.5", "Proxy-Require and Require",
         "420 \"containing an Unsupported header field listing these features from either the Require or "
         "Proxy-Require header field, depending on the role\"",
         Answered(420, unsupported=("noProxiesSupportThis", "norDoAnyProxiesSupportThis"),
                  not_listed=("nothingSupportsThis", "nothingSupportsThisEither")),
         "fold-and-staple.example.com:5060", "a proxy lists Proxy-Require's tags; Require is the UAS's business"),
    Case("invut.dat", "3.3.6", "Unknown Content-Type",
         "\"A proxy receiving this request would process it just as it would any other INVITE\" (an endpoint: "
         "415)", Forwarded(keep=("Content-Type:",)), "somehost.example.com:5060"),
    Case("regaut01.dat", "3.3.7", "Unknown Authorization Scheme",
         "\"A proxy will treat this request as it would any other REGISTER ... it will include this Authorization "
         "header field unmodified\"", Forwarded(keep=("Authorization:",)), "192.0.2.253:5060"),
    Case("multi01.dat", "3.3.8", "Multiple Values in Single Value Required Fields",
         "\"An element receiving this request would respond with a 400 Bad Request error\"",
         Answered(400), "192.0.2.25:5060"),
    Case("mcl01.dat", "3.3.9", "Multiple Content-Length Values",
         "\"should respond with an error\"; over UDP the rest of the datagram is discarded",
         Answered(400), "host5.example.net:5060"),
    Case("bcast.dat", "3.3.10", "200 OK Response with Broadcast Via Header Field Value",
         "\"proxies should drop such responses\" (relaying would send to 255.255.255.255)",
         Dropped("stray_responses"), MEMBER, "top Via 192.0.2.198 is not the ALG's; nothing goes to the broadcast"),
    Case("zeromf.dat", "3.3.11", "Max-Forwards of Zero",
         "\"A proxy should not forward the request and should respond 483 (Too Many Hops)\"",
         Answered(483), "host1.example.com:5060"),
    Case("cparam01.dat", "3.3.12", "REGISTER with a Contact Header Parameter",
         "\"This REGISTER should succeed\" (a registrar's verdict on contact-param vs url-param)",
         Forwarded(keep=("Contact:",)), "saturn.example.com:5060", "registrar verdict: the proxy forwards"),
    Case("cparam02.dat", "3.3.13", "REGISTER with a url-parameter",
         "\"The register should succeed\" (a registrar's verdict)",
         Forwarded(keep=("Contact:",)), "saturn.example.com:5060", "registrar verdict: the proxy forwards"),
    Case("regescrt.dat", "3.3.14", "REGISTER with a URL Escaped Header",
         "\"The register should succeed\" and keep the escaped Route in the contact (a registrar's verdict)",
         Forwarded(keep=("M:",)), "host5.example.com:5060", "registrar verdict: the proxy forwards"),
    Case("sdp01.dat", "3.3.15", "Unacceptable Accept Offering",
         "the recipient \"could respond with a 406 Not Acceptable\" or a 400 (a UAS's verdict)",
         Forwarded(keep=("Accept:",)), "192.0.2.15:5060", "UAS verdict: the proxy forwards"),
    # -- 3.4 backward compatibility ---------------------------------------------------------
    Case("inv2543.dat", "3.4.1", "INVITE with RFC 2543 Syntax",
         "\"a legal message per RFC 2543 ... that should be accepted by RFC 3261 elements that want to maintain "
         "backwards compatibility\" (no branch, no From tag, no Content-Length, no Max-Forwards)",
         FORWARD, "iftgw.example.com:5060",
         "forwarded with a Max-Forwards added (RFC 3261 §16.6 step 3) and the body as received"),
    # -- not from the RFC -------------------------------------------------------------------
    Case("test.dat", "-", "(not from RFC 4475)",
         "no SIP-Version in the Request-Line, no Via, no CSeq, a header line without a colon: not a SIP request "
         "(RFC 3261 §7.1, §8.1.1)",
         Dropped("malformed_requests"), "192.0.2.1:5060",
         "with no Via there is nowhere to send a 400 (RFC 3261 §18.2.2): dropped"),
)  # fmt: skip


def markdown_rows() -> list[str]:
    """The README's table rows, made from `CASES` (a test holds the README to them)."""
    rows = []
    for case in CASES:
        does = case.outcome.describe()
        does = does[0].upper() + does[1:] + (f" — {case.note}" if case.note else "")
        section = f"§{case.section}" if case.section[0].isdigit() else case.section
        rows.append(f"| `{case.file}` | {section} | {case.title}: {case.rfc} | {does} |")
    return rows
