"""A SIP message as a proxy sees it: a start line, headers kept raw and in order, a body.

Parsing is lazy: `parse_message` splits lines and names; typed values (Via, CSeq, tags) are
parsed on first use and cached. Headers are decoded as Latin-1 so that any byte sequence
survives a round trip unchanged; the names and values a proxy reads are ASCII.
"""

from __future__ import annotations

import re
from typing import Final

from sipshadow.sip.errors import SipParseError
from sipshadow.sip.headers import (
    COMPACT_FORMS,
    TOKEN_RE,
    Via,
    parse_cseq,
    split_header_values,
    tag_of,
)

SIP_VERSION: Final = "SIP/2.0"

# Common spellings straight to their lower-case key, so the hot path skips strip/lower.
_KNOWN_NAMES: dict[str, str] = {}
for _name in (
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "Route",
    "Record-Route",
    "User-Agent",
    "Subject",
    "Allow",
    "Supported",
    "Call-Id",
    "Expires",
    "Server",
    "Accept",
    "Event",
    "Session-Expires",
    "Min-SE",
):
    _KNOWN_NAMES[_name] = _name.lower()
    _KNOWN_NAMES[_name.lower()] = _name.lower()
for _short, _long in COMPACT_FORMS.items():
    _KNOWN_NAMES[_short] = _long
    _KNOWN_NAMES[_short.upper()] = _long

#: Headers whose comma-separated values are separate entries the proxy reads one by one.
LIST_HEADERS: Final = frozenset({"via", "route", "record-route", "contact"})

_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9]{2})(?: (.*))?$", re.IGNORECASE | re.DOTALL)
#: Every status code the grammar admits (`_STATUS_RE`: 100-699), for its fast path.
_STATUS_CODES: Final = frozenset(str(code) for code in range(100, 700))
_FOLD_RE = re.compile(r"\r\n[ \t]+")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
#: The largest Content-Length worth reading: a UDP datagram is below 64 KiB anyway.
_MAX_LENGTH_DIGITS = 9
_UNSET: Final = object()

#: A header entry: (key, name as written, value, raw line or None once rewritten).
Header = tuple[str, str, str, str | None]


class SipMessage:
    """A request (`method` set) or a response (`status` set), rewritable in place.

    `headers` is a list of `Header` entries in wire order; `body` is bytes. The typed
    accessors (`cseq`, `from_tag`, `to_tag`, `top_via`) parse on first use, give None when the
    header is absent and raise `SipParseError` when it is malformed; `call_id` never raises.
    """

    __slots__ = (
        "_call_id",
        "_cseq",
        "_from_tag",
        "_to_tag",
        "_top_via",
        "body",
        "headers",
        "method",
        "reason",
        "status",
        "uri",
    )

    def __init__(
        self,
        headers: list[Header],
        body: bytes = b"",
        *,
        method: str | None = None,
        uri: str = "",
        status: int = 0,
        reason: str = "",
    ) -> None:
        self.method = method
        self.uri = uri
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self._call_id: object = _UNSET
        self._cseq: object = _UNSET
        self._from_tag: object = _UNSET
        self._to_tag: object = _UNSET
        self._top_via: object = _UNSET

    @property
    def is_request(self) -> bool:
        return self.method is not None

    # -- reading --------------------------------------------------------------------------

    def first(self, key: str) -> str | None:
        """The first value of header `key` (lower-case, long form), or None."""
        for entry in self.headers:
            if entry[0] == key:
                return entry[2]
        return None

    def count(self, key: str) -> int:
        """How many `key` header lines (not values) the message has."""
        return sum(1 for entry in self.headers if entry[0] == key)

    def values(self, key: str) -> list[str]:
        """Every value of `key`, list headers split at their commas (§7.3.1); raises
        `SipParseError` on a malformed list."""
        found: list[str] = []
        for entry in self.headers:
            if entry[0] == key:
                if key in LIST_HEADERS:
                    found.extend(split_header_values(entry[2]))
                else:
                    found.append(entry[2])
        return found

    def first_value(self, key: str) -> str | None:
        """The first comma-separated value of a list header such as Via or Route, or None;
        raises `SipParseError` on a malformed list."""
        raw = self.first(key)
        if raw is None:
            return None
        return split_header_values(raw)[0] if "," in raw else raw.strip()

    @property
    def call_id(self) -> str | None:
        """The Call-ID, or None when absent or empty."""
        if self._call_id is _UNSET:
            value = self.first("call-id")
            self._call_id = value.strip() if value else None
        return self._call_id  # type: ignore[return-value]

    @property
    def cseq(self) -> tuple[int, str] | None:
        """(sequence number, method), per `parse_cseq`."""
        if self._cseq is _UNSET:
            value = self.first("cseq")
            self._cseq = parse_cseq(value) if value is not None else None
        return self._cseq  # type: ignore[return-value]

    @property
    def from_tag(self) -> str | None:
        """The From tag (§19.3); None when From or its tag is absent."""
        if self._from_tag is _UNSET:
            value = self.first("from")
            self._from_tag = tag_of(value) if value is not None else None
        return self._from_tag  # type: ignore[return-value]

    @property
    def to_tag(self) -> str | None:
        """The To tag; None when To is absent or untagged (a request outside a dialog, §8.1.1.2)."""
        if self._to_tag is _UNSET:
            value = self.first("to")
            self._to_tag = tag_of(value) if value is not None else None
        return self._to_tag  # type: ignore[return-value]

    @property
    def top_via(self) -> Via | None:
        """The first Via value (§8.1.1.7, §18.2.1), or None when there is no Via."""
        if self._top_via is _UNSET:
            value = self.first_value("via")
            self._top_via = Via.parse(value) if value is not None else None
        return self._top_via  # type: ignore[return-value]

    # -- rewriting (what a proxy does, §16.6) ---------------------------------------------

    def _forget(self, key: str) -> None:
        # branches, not setattr by name: compiled, each is a store at a fixed offset
        if key == "via":
            self._top_via = _UNSET
        elif key == "call-id":
            self._call_id = _UNSET
        elif key == "cseq":
            self._cseq = _UNSET
        elif key == "from":
            self._from_tag = _UNSET
        elif key == "to":
            self._to_tag = _UNSET

    def _index(self, key: str) -> int:
        for index, entry in enumerate(self.headers):
            if entry[0] == key:
                return index
        return -1

    def push_front(self, key: str, name: str, value: str, after: str | None = None) -> None:
        """Add a header value above the existing ones of its kind (Via, Record-Route).

        With none of its kind present it goes after the first header `after` (or first).
        """
        index = self._index(key)
        if index < 0:
            anchor = self._index(after) if after else -1
            index = anchor + 1 if anchor >= 0 else 0
        self.headers.insert(index, (key, name, value, None))
        self._forget(key)

    def pop_front(self, key: str) -> str | None:
        """Remove and return the first value of a list header (the top Via, the top Route), or
        None if absent; raises `SipParseError` on a malformed list."""
        index = self._index(key)
        if index < 0:
            return None
        entry = self.headers[index]
        value = entry[2]
        if "," in value:
            parts = split_header_values(value)
            if len(parts) > 1:
                self.headers[index] = (key, entry[1], ", ".join(parts[1:]), None)
                value = parts[0]
            else:
                del self.headers[index]
        else:
            del self.headers[index]
        self._forget(key)
        return value.strip()

    def pop_back(self, key: str) -> str | None:
        """Remove and return the last value of a list header (§16.4: a strict router's target),
        or None if absent; raises `SipParseError` on a malformed list."""
        index = -1
        for position, entry in enumerate(self.headers):
            if entry[0] == key:
                index = position
        if index < 0:
            return None
        entry = self.headers[index]
        parts = split_header_values(entry[2])
        if len(parts) > 1:
            self.headers[index] = (key, entry[1], ", ".join(parts[:-1]), None)
        else:
            del self.headers[index]
        self._forget(key)
        return parts[-1]

    def replace_front(self, key: str, value: str) -> None:
        """Replace the first value of `key` (keeping any further comma-separated values).

        Raises `KeyError` if there is no `key` header (it would overwrite the last header).
        """
        index = self._index(key)
        if index < 0:
            raise KeyError(key)
        entry = self.headers[index]
        if key in LIST_HEADERS and "," in entry[2]:
            parts = split_header_values(entry[2])
            value = ", ".join([value, *parts[1:]])
        self.headers[index] = (key, entry[1], value, None)
        self._forget(key)

    def set(self, key: str, name: str, value: str) -> None:
        """Set a single-valued header, adding it at the end if absent."""
        index = self._index(key)
        if index < 0:
            self.headers.append((key, name, value, None))
        else:
            self.headers[index] = (key, self.headers[index][1], value, None)
        self._forget(key)

    # -- writing --------------------------------------------------------------------------

    def start_line(self) -> str:
        """The request or status line, without its CRLF."""
        if self.method is not None:
            return f"{self.method} {self.uri} {SIP_VERSION}"
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def to_bytes(self) -> bytes:
        """The wire form: start line, headers (lines never rewritten go out as received), a
        blank line, the body. Content-Length is not recomputed (`frame_datagram` trims the
        body to it). Text set by callers must be Latin-1, else UnicodeEncodeError."""
        lines = [self.start_line()]
        for _key, name, value, raw in self.headers:
            lines.append(raw if raw is not None else f"{name}: {value}")
        lines.append("\r\n")
        # b"".join, not `+`: compiled by mypyc 1.19, `head + self.body` leaked the result (~400
        # bytes a message; tests/unit/test_native_build.py holds it)
        return b"".join(("\r\n".join(lines).encode("latin-1"), self.body))

    def frame_datagram(self) -> None:
        """Apply §18.3's framing for a datagram: the body is exactly Content-Length octets.

        Octets past Content-Length are discarded (RFC 4475 §3.1.1.8); fewer octets than it
        announces, a malformed value (§20.14: 1*DIGIT) or two Content-Length headers
        (RFC 4475 §3.3.9) raise `SipParseError`. Without the header the body is the rest of
        the datagram (§18.3 allows that over UDP).
        """
        value: str | None = None
        for entry in self.headers:
            if entry[0] == "content-length":
                if value is not None:
                    raise SipParseError("Multiple Content-Length")
                value = entry[2]
        if value is None:
            return
        if not (value.isascii() and value.isdigit()) or len(value) > _MAX_LENGTH_DIGITS:
            raise SipParseError("Bad Content-Length")
        length = int(value)
        if length > len(self.body):
            raise SipParseError("Content-Length exceeds body")
        if length < len(self.body):
            self.body = self.body[:length]

    def __repr__(self) -> str:
        return f"<SipMessage {self.start_line()!r} call-id={self.call_id!r}>"


def _header_key(name: str) -> str:
    key = _KNOWN_NAMES.get(name)
    if key is not None:
        return key
    stripped = name.strip(" \t")  # not str.strip(): "Via\xa0" is no token, so not a Via
    if not TOKEN_RE.fullmatch(stripped):
        raise SipParseError("Malformed header name")
    lowered = stripped.lower()
    return COMPACT_FORMS.get(lowered, lowered)


def parse_message(data: bytes) -> SipMessage:
    """Parse one UDP datagram into a `SipMessage` (§7); raises `SipParseError` if it is not one.

    The error's status is 505 for a request of another SIP version, else 400. Leading CRLFs
    are skipped (§7.5) and a head with bare-LF line ends is accepted. Only the start line and
    the header lines' shape and names are checked here; values are parsed on use, and the body
    is everything after the blank line until `frame_datagram` applies Content-Length.
    """
    text, body = split_head(data)
    lines = text.split("\r\n")
    breaks = len(lines) - 1
    # Unfolding takes out whole CRLFs, so it never changes this verdict: it may come first.
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise SipParseError("Bare CR or LF in header")  # would smuggle a header downstream
    headers: list[Header] = []
    try:
        for index in range(1, len(lines)):
            line = lines[index]
            lead = line[:1]
            if lead == " " or lead == "\t":
                return _parse_folded(text, body)  # a continuation line (§7.3.1)
            colon = line.find(":")
            if colon < 0:
                raise SipParseError("Malformed header line")
            name = line[:colon]
            key = _KNOWN_NAMES.get(name)
            headers.append((key if key is not None else _header_key(name), name, line[colon + 1 :].strip(), line))
    except SipParseError:
        if "\r\n " in text or "\r\n\t" in text:
            return _parse_folded(text, body)  # a later continuation may join this line to another
        raise
    return _with_start_line(lines[0], headers, body)


def split_head(data: bytes) -> tuple[str, bytes]:
    """A datagram's head (Latin-1 text, CRLF line ends) and body; `SipParseError` if it has no
    blank line. Leading CRLFs are skipped (§7.5) and bare-LF line ends accepted."""
    data = data.lstrip(b"\r\n")  # no copy if there are none
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, body = data[:end], data[end + 4 :]
    else:
        bare = data.find(b"\n\n")
        if bare < 0:
            raise SipParseError("Missing end of headers")
        head, body = data[:bare].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), data[bare + 2 :]
    return head.decode("latin-1"), body


def _parse_folded(text: str, body: bytes) -> SipMessage:
    """`parse_message` for a head with continuation lines: unfolded first, then read whole."""
    lines = _FOLD_RE.sub(" ", text).split("\r\n")
    headers: list[Header] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError("Malformed header line")
        headers.append((_header_key(name), name, value.strip(), line))
    return _with_start_line(lines[0], headers, body)


def _with_start_line(line: str, headers: list[Header], body: bytes) -> SipMessage:
    if line[:4].upper() == "SIP/":
        code = line[8:11]
        if line.startswith("SIP/2.0 ") and code in _STATUS_CODES and (len(line) == 11 or line[11] == " "):
            return SipMessage(headers, body, status=int(code), reason=line[12:])  # as the grammar reads it
        match = _STATUS_RE.match(line)
        if match is None:
            raise SipParseError("Malformed status line")
        return SipMessage(headers, body, status=int(match.group(1)), reason=match.group(2) or "")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise SipParseError("Malformed request line")
    method, uri, version = parts
    if not TOKEN_RE.fullmatch(method):
        raise SipParseError("Malformed method")
    if version.upper() != SIP_VERSION:
        if _VERSION_RE.fullmatch(version):
            raise SipParseError("Version Not Supported", 505)  # §8.2.2, RFC 4475 §3.1.2.16
        raise SipParseError("Malformed request line")
    if ":" not in uri:
        raise SipParseError("Malformed Request-URI")
    return SipMessage(headers, body, method=method, uri=uri)
