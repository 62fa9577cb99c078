"""SIP over a byte stream (RFC 3261 §18.3, §7.5; RFC 5626 §3.5.1): bytes in, messages out.

A stream has no datagram boundaries, so every message must carry Content-Length (§18.3: a
stream without it cannot be framed; the ALG answers 400 when it can and closes the
connection). CRLFs before a start line are ignored (§7.5), except that a double CRLF at a
message boundary is a keep-alive ping (RFC 5626 §3.5.1), answered with one CRLF.

`StreamFramer` is sans-IO and pure: the shell feeds it what a connection read, and acts on
what comes back (`Framed`: hand the message to the core; `KeepAlive`: write `PONG`;
`Unframable`: answer 400 to the head if it is a request, then close). Limits bound what one
connection can make this node hold: a header block larger than `max_head_bytes` or a
Content-Length above `max_body_bytes` is refused as soon as it is seen, before the body is
buffered. A message that never completes is the shell's to time out (`pending_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipshadow.sip.headers import COMPACT_FORMS

#: RFC 5626 §3.5.1: the ping is a double CRLF, the pong a single one.
PING = b"\r\n\r\n"
PONG = b"\r\n"
#: Defaults for one connection: a header block, and a body (SDP, a few MIME parts).
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
_MAX_LENGTH_DIGITS = 10
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Framed:
    """One whole message: its start line, headers and exactly Content-Length octets of body.

    `consumed`: the stream bytes it took, the CRLFs ignored before it included (what a
    replica counts to know where the stream stands)."""

    data: bytes
    consumed: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A CRLFCRLF ping between messages: write `PONG` back. `consumed` as for `Framed`."""

    consumed: int = field(default=len(PING), compare=False)


@dataclass(frozen=True, slots=True)
class Unframable:
    """The stream cannot be framed any further: `reason` says why; `head` holds the header
    block that could not be framed, if one was read (answer 400 to it if it is a request).
    The connection must close: nothing after this point can be trusted to start a message."""

    reason: str
    head: bytes = b""


Framing = Framed | KeepAlive | Unframable


class StreamFramer:
    """Frames one connection's inbound bytes; once `Unframable` is returned it stays broken."""

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.broken = False
        self._buffer = bytearray()
        self._head_end: int | None = None  # index past the blank line, once the head is in
        self._length = 0  # the body's Content-Length, once the head is in
        self._scanned = 0  # how far the head was searched for its end without finding it
        self._skipped = 0  # lone CRLFs dropped since the last message or ping

    @property
    def pending_bytes(self) -> int:
        """Bytes of a message begun and not yet complete (0 between messages)."""
        return len(self._buffer.lstrip(b"\r\n")) if self._head_end is None else len(self._buffer)

    def feed(self, data: bytes) -> list[Framing]:
        """Add what the connection read; every message, ping and fault it completes, in order.
        Never raises."""
        if self.broken:
            return []
        self._buffer += data
        out: list[Framing] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)
            if isinstance(item, Unframable):
                self.broken = True
                self._buffer.clear()
                return out

    def _next(self) -> Framing | None:
        buffer = self._buffer
        while self._head_end is None:
            if buffer.startswith(PING):
                del buffer[: len(PING)]
                consumed, self._skipped = self._skipped + len(PING), 0
                return KeepAlive(consumed)
            if PING.startswith(buffer):
                return None  # nothing yet, or perhaps a ping not whole yet
            if buffer.startswith(b"\r\n"):
                del buffer[:2]  # a lone CRLF before a start line (§7.5)
                self._skipped += 2
                self._scanned = 0
                continue
            end = buffer.find(_HEAD_END, self._scanned)
            if end < 0:
                self._scanned = max(0, len(buffer) - len(_HEAD_END) + 1)  # a slow sender costs O(n), not O(n²)
                if len(buffer) > self.max_head_bytes:
                    return Unframable(f"header block over {self.max_head_bytes} bytes")
                return None
            self._scanned = 0
            head = bytes(buffer[: end + 2])
            if end + 4 > self.max_head_bytes:
                return Unframable(f"header block over {self.max_head_bytes} bytes", head)
            length = content_length(head)
            if isinstance(length, str):
                return Unframable(length, head)
            if length > self.max_body_bytes:
                return Unframable(f"Content-Length {length} over the {self.max_body_bytes}-byte limit", head)
            self._head_end, self._length = end + 4, length
        whole = self._head_end + self._length
        if len(buffer) < whole:
            return None
        message = bytes(buffer[:whole])
        del buffer[:whole]
        self._head_end = None
        consumed, self._skipped = self._skipped + whole, 0
        return Framed(message, consumed)


def content_length(head: bytes) -> int | str:
    """The Content-Length (or compact `l`) of a header block, or why there is none to frame
    by: missing (§18.3), not 1*DIGIT (§20.14) or given twice with different values."""
    found: int | None = None
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")  # §7.3.1 line folding
    for line in unfolded.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        key = name.strip().lower().decode("latin-1")
        if not colon or COMPACT_FORMS.get(key, key) != "content-length":
            continue
        text = value.strip()
        if not text.isdigit() or len(text) > _MAX_LENGTH_DIGITS:
            return f"Bad Content-Length {text[:20]!r}"
        if found is not None and found != int(text):
            return "Multiple Content-Length"
        found = int(text)
    return "Missing Content-Length (required on a stream, RFC 3261 §18.3)" if found is None else found
