"""Typed views of the headers a proxy routes on: Via, name-addr (From/To/Route), CSeq, URIs.

Each view parses one header value (RFC 3261 §20, §25.1) and raises `SipParseError` on bad
input. Headers the gateway does not route on are never parsed: they pass through untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipshadow.sip.errors import SipParseError
from sipshadow.sip.memo import remember

#: RFC 3261 §7.3.3 compact forms, plus the later RFCs' (3265 o/u, 3515 r, 3892 b, 4028 x,
#: 3841 a/j/d, 4474 y/n).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
TOKEN_RE = re.compile(_TOKEN)
_SENT_PROTOCOL_RE = re.compile(
    r"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*(" + _TOKEN + r")"
    r"[ \t]+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*$",
    re.IGNORECASE,
)
#: The methods of RFC 3261 and its extensions: tokens, so a CSeq naming one skips the grammar
#: (and the core counts requests by them).
METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH",
    "INFO", "REFER", "MESSAGE", "UPDATE",
})  # fmt: skip
#: Parameter names seen in nearly every message: tokens, so they skip the token check.
_COMMON_PARAMS = frozenset({"branch", "received", "rport", "tag", "lr", "transport", "maddr", "user", "ttl"})
_CSEQ_RE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+(" + _TOKEN + r")[ \t]*$")
_HOSTPORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?$")
_URI_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value (§7.3.1), respecting quotes and <...>.

    Returns the values stripped; raises `SipParseError` on an empty element of a list or an
    unbalanced quote or <...>.
    """
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        parts = [part.strip() for part in value.split(",")]
        if not all(parts):
            raise SipParseError("Malformed header list")
        return parts
    parts = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for index, char in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(value[start:index].strip())
            start = index + 1
    parts.append(value[start:].strip())
    if quoted or depth != 0 or any(not part for part in parts):
        raise SipParseError("Malformed header list")
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse `;name=value;flag` parameters into {lower-cased name: value, or None for a flag}
    (§7.3.1); values keep their case and quotes. Raises `SipParseError` on a bad name."""
    params: dict[str, str | None] = {}
    for item in text.split(";") if '"' not in text else _split_unquoted(text, ";"):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if name not in _COMMON_PARAMS and not TOKEN_RE.fullmatch(name):
            raise SipParseError("Malformed parameter")
        params[name] = value.strip() if sep else None
    return params


def _split_unquoted(text: str, separator: str) -> list[str]:
    """`text.split(separator)`, but not inside quoted strings (`;x="a;b"` is one parameter)."""
    parts: list[str] = []
    quoted = False
    escaped = False
    start = 0
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    if quoted:
        raise SipParseError("Unterminated quoted string")
    parts.append(text[start:])
    return parts


def format_params(params: dict[str, str | None]) -> str:
    """The inverse of `parse_params`, with a leading `;` for each parameter."""
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params.items())


def parse_hostport(text: str) -> tuple[str, int | None]:
    """`host[:port]` (§25.1) as (lower-cased host, IPv6 kept in brackets; port or None).

    Raises `SipParseError` on a malformed host or a port outside 1-65535.
    """
    match = _HOSTPORT_RE.match(text.strip())
    if match is None:
        raise SipParseError("Malformed host")
    port = match.group(2)
    return match.group(1).lower(), _port(port) if port else None


def _port(text: str) -> int:
    if not (len(text) <= 5 and text.isascii() and text.isdigit()):
        raise SipParseError("Malformed port")  # e.g. rport=abc: int() would raise ValueError
    port = int(text)
    if not 0 < port < 65536:
        raise SipParseError("Port out of range")
    return port


@dataclass(frozen=True, slots=True)
class Uri:
    """A SIP or SIPS URI's routing parts (§19.1.1): enough to ask "is this addressed to me?".

    `scheme` and `host` are lower-cased, `port` is None when absent. For any other scheme
    (tel, …) only `scheme` is set.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    #: The `?header=value` part, if any: not allowed in a Request-URI (§19.1.1, RFC 4475 §3.1.2.11).
    headers: str = ""

    @staticmethod
    def parse(text: str) -> Uri:
        """Parse a URI's routing parts; memoized, since a call's URIs repeat in its messages.

        Raises `SipParseError` on a missing scheme or a malformed SIP URI.
        """
        return _parse_uri(text) if len(text) <= _MEMO_MAX_CHARS else Uri._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Uri:
        text = text.strip()
        scheme_match = _URI_SCHEME_RE.match(text)
        if scheme_match is None:
            raise SipParseError("Malformed URI")
        scheme = scheme_match.group(0)[:-1].lower()
        rest = text[scheme_match.end() :]
        if scheme not in ("sip", "sips"):
            return cls(scheme, None, "", None, {})
        user: str | None = None
        if "@" in rest:
            # The last "@" ends the userinfo: "@" may not appear unescaped in hostport, params
            # or headers, while a user may hold "?" and ";" (§25.1 user-unreserved).
            user, rest = rest.rsplit("@", 1)
            if not user:
                raise SipParseError("Malformed URI")
        rest, _, headers = rest.partition("?")
        hostport, _, params = rest.partition(";")
        host, port = parse_hostport(hostport)
        return cls(scheme, user, host, port, parse_params(params), headers)


@dataclass(slots=True, init=False)
class Via:
    """One Via value (§20.42, §18.2.1, RFC 3581 rport).

    `transport` upper-cased, `host` lower-cased (IPv6 in brackets), `port` None when absent,
    `params` as `parse_params` gives them (`received`, `rport`, `branch`, `maddr`…).
    """

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    def __init__(self, transport: str, host: str, port: int | None, params: dict[str, str | None]) -> None:
        # written out for the compiled build (see core.events.MessageReceived); immutable by convention
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    @staticmethod
    def parse(text: str) -> Via:
        """Parse one Via value (not a list); memoized, since a call's Vias come back in every
        response. Raises `SipParseError` unless it is `SIP/2.0/transport host[:port]` + params."""
        return _parse_via(text) if len(text) <= _MEMO_MAX_CHARS else Via._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Via:
        head, _, params = text.partition(";")
        sent_by = _plain_sent_by(head)
        if sent_by is not None:
            transport, host, port_text = sent_by
        else:
            match = _SENT_PROTOCOL_RE.match(head)
            if match is None:
                raise SipParseError("Malformed Via")
            transport, host, port_text = match.group(1), match.group(2), match.group(3) or ""
        return cls(transport.upper(), host.lower(), _port(port_text) if port_text else None, parse_params(params))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def response_address(self) -> tuple[str, int]:
        """Where a response to this hop goes over UDP (§18.2.2, RFC 3581 §4).

        maddr wins (with the sent-by port), then received (with rport's value if given, else
        the sent-by port), then sent-by itself. Returns (host without brackets, port); the
        host may be a name (RFC 3263 §5): resolving it is the sender's job, never the core's.
        Raises `SipParseError` on a malformed rport value.
        """
        maddr = self.params.get("maddr")
        if maddr:
            return maddr.strip("[]"), self.port or 5060
        host = self.params.get("received") or self.host
        rport = self.params.get("rport")
        if rport:
            return host.strip("[]"), _port(rport)
        return host.strip("[]"), self.port or 5060

    def __str__(self) -> str:
        sent_by = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {sent_by}{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters (§20.10).

    `uri` is the URI text as written (unparsed), `params` the parameters after it.
    """

    uri: str
    params: dict[str, str | None]

    @staticmethod
    def parse(text: str) -> NameAddr:
        """Parse a name-addr; memoized, since From and To repeat in every message of a call.

        Raises `SipParseError` on a malformed one.
        """
        return _parse_name_addr(text) if len(text) <= _MEMO_MAX_CHARS else NameAddr._parse(text)

    @classmethod
    def _parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if text.startswith('"'):
            close = _closing_quote(text)
            text = text[close + 1 :].lstrip()
            if not text.startswith("<"):
                raise SipParseError("Malformed name-addr")
        less = text.find("<")
        if less >= 0:
            greater = text.find(">", less)
            if greater < 0:
                raise SipParseError("Malformed name-addr")
            uri, params = text[less + 1 : greater].strip(), text[greater + 1 :]
        else:
            uri, _, params = text.partition(";")
            params = ";" + params if params else ""
        if not uri or _URI_SCHEME_RE.match(uri) is None:
            raise SipParseError("Malformed URI")
        if params.strip() and not params.lstrip().startswith(";"):
            raise SipParseError("Malformed name-addr")
        return cls(uri, parse_params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def tag_of(text: str) -> str | None:
    """The tag of a From or To value (§19.3), the name-addr validated as `NameAddr.parse` does.

    Every dialog has its own tag, so the whole value rarely repeats and its memo would miss;
    the value less its tag repeats across calls (`service <sip:service@host>`). So the common
    spelling (`<...>;tag=TOKEN`) is split there and the rest parsed through the memo; anything
    else takes the full parse. Returns None when there is no tag; raises `SipParseError`.
    """
    close = text.rfind(">")
    params = text[close + 1 :]
    if close < 0 or params.count(";tag=") != 1 or '"' in params or "<" in params or "<" not in text[:close]:
        return NameAddr.parse(text).tag
    before, _, after = params.partition(";tag=")
    tag, semicolon, others = after.partition(";")
    NameAddr.parse(text[: close + 1] + before + semicolon + others)  # validates the rest
    return tag.strip()


def _closing_quote(text: str) -> int:
    escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return index
    raise SipParseError("Unterminated quoted string")


def parse_cseq(text: str) -> tuple[int, str]:
    """CSeq as (sequence number, method) (§20.16); the number must be below 2**31 (§8.1.1.5).

    Raises `SipParseError` otherwise or on a malformed value.
    """
    digits, space, method = text.partition(" ")
    if not (space and _is_digits(digits, 10) and method in METHODS):  # else the grammar's way
        match = _CSEQ_RE.match(text)
        if match is None:
            raise SipParseError("Malformed CSeq")
        digits, method = match.group(1), match.group(2)
    number = int(digits)
    if number >= 2**31:
        raise SipParseError("CSeq number too large")
    return number, method


def _is_digits(text: str, most: int) -> bool:
    """1 to `most` ASCII digits (str.isdigit alone takes "²" and the other Unicode digits)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _plain_sent_by(head: str) -> tuple[str, str, str] | None:
    """(transport, host, port or "") of a Via's `SIP/2.0/transport host[:port]` written the
    common way (no spaces but the one, no brackets); None for any other spelling, which the
    grammar (`_SENT_PROTOCOL_RE`) then reads. Never accepts what the grammar refuses."""
    if not head.startswith("SIP/2.0/"):
        return None
    transport, space, sent_by = head[8:].partition(" ")
    if not (space and transport.isascii() and transport.isalnum()):
        return None
    host, colon, port = sent_by.partition(":")
    if colon and not _is_digits(port, 5):
        return None
    letters = host.replace(".", "").replace("-", "")
    if not (letters and host.isascii() and letters.isalnum()):
        return None
    return transport, host, port


# Pure functions of their text, so memoizing them changes no result, only the cost. Parsed
# values are frozen (callers copy `params` before changing it).
# Only short values are memoized, so a flood of huge headers cannot pin much memory.
_MEMO_MAX_CHARS = 256
_MEMO_ENTRIES = 4096


#: The memos (`sip.memo`: at most `_MEMO_ENTRIES` values, emptied when full). Each parse is
#: called by name, not through a stored callable: compiled, a direct C call.
_VIAS: dict[str, Via] = {}
_NAME_ADDRS: dict[str, NameAddr] = {}
_URIS: dict[str, Uri] = {}


def _parse_via(text: str) -> Via:
    found = _VIAS.get(text)  # a parse that raises (bad input) is never memoized
    return found if found is not None else remember(_VIAS, text, Via._parse(text), _MEMO_ENTRIES)


def _parse_name_addr(text: str) -> NameAddr:
    found = _NAME_ADDRS.get(text)
    return found if found is not None else remember(_NAME_ADDRS, text, NameAddr._parse(text), _MEMO_ENTRIES)


def _parse_uri(text: str) -> Uri:
    found = _URIS.get(text)
    return found if found is not None else remember(_URIS, text, Uri._parse(text), _MEMO_ENTRIES)


class _Memos:
    """`cache_clear` as functools' memos have it: the mutation tests empty every memo."""

    def cache_clear(self) -> None:
        _VIAS.clear()
        _NAME_ADDRS.clear()
        _URIS.clear()


PARSE_MEMOS = _Memos()
