"""Hand-scripted SIP peers on loopback UDP sockets, for driving a real `sipshadow serve`.

The ALG's acceptance tests need to control every tag, branch and timing, which SIPp makes
awkward; these peers send exactly the bytes a test writes and show exactly what arrived.
The parser here is deliberately tiny and independent of `sipshadow.sip`: the tests judge the
ALG's output, so they must not read it with the ALG's own code.

A peer reads its socket on a background thread, so a member answers the ALG's OPTIONS probes
at once when asked to (`answer_options`), whatever the test is doing; probes never reach the
test's inbox, only `peer.probes`.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Address = tuple[str, int]
HOST = "127.0.0.1"

#: RFC 3261 §7.3.3 compact header names, so lookups find either spelling.
COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "l": "content-length",
    "m": "contact",
    "c": "content-type",
    "k": "supported",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "e": "content-encoding",
    "u": "allow-events",
    "b": "referred-by",
    "x": "session-expires",
}
#: Headers whose value is a comma-separated list (§7.3.1), split by `SipMessage.values`.
LIST_HEADERS = frozenset({"via", "route", "record-route", "contact", "proxy-require", "require", "unsupported"})


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie first, §8.1.1.7)."""
    return "z9hG4bK" + uuid.uuid4().hex[:16]


def new_token() -> str:
    return uuid.uuid4().hex[:10]


def split_list(value: str) -> list[str]:
    """Split a header value on the commas that are not inside <...> or quotes."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for index, char in enumerate(value):
        if char == '"' and (index == 0 or value[index - 1] != "\\"):
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(value[start:index].strip())
            start = index + 1
    parts.append(value[start:].strip())
    return [part for part in parts if part]


def param(value: str, name: str) -> str | None:
    """A `;name=value` parameter of a name-addr or Via (outside <...>), or None."""
    tail = value.rsplit(">", 1)[-1]
    for item in tail.split(";")[1:]:
        key, _, found = item.partition("=")
        if key.strip().lower() == name:
            return found.strip()
    return None


@dataclass
class SipMessage:
    """A received datagram split into start line, headers (name as sent, value) and body."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    source: Address = ("", 0)

    @classmethod
    def parse(cls, data: bytes, source: Address = ("", 0)) -> SipMessage:
        head, _, body = data.partition(b"\r\n\r\n")
        text = head.decode("latin-1").replace("\r\n ", " ").replace("\r\n\t", " ")
        lines = text.split("\r\n")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return cls(lines[0], headers, body, data, source)

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/")

    @property
    def method(self) -> str:
        return self.start_line.split(" ", 1)[0] if self.is_request else ""

    @property
    def uri(self) -> str:
        return self.start_line.split(" ")[1]

    @property
    def status(self) -> int:
        return int(self.start_line.split(" ")[1]) if not self.is_request else 0

    def values(self, name: str) -> list[str]:
        """Every value of a header, in order, list headers split on their commas."""
        wanted = name.lower()
        found: list[str] = []
        for header, value in self.headers:
            key = header.lower()
            if COMPACT.get(key, key) == wanted:
                found.extend(split_list(value) if wanted in LIST_HEADERS else [value])
        return found

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def tag(self, name: str) -> str | None:
        """The tag parameter of From or To."""
        value = self.first(name)
        return None if value is None else param(value, "tag")

    @property
    def call_id(self) -> str:
        return self.first("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        number, method = (self.first("cseq") or "0 ?").split()
        return int(number), method

    def describe(self) -> str:
        return f"{self.start_line!r} from {self.source[0]}:{self.source[1]}"


def build_message(
    start_line: str,
    headers: Iterable[tuple[str, str] | str],
    body: bytes = b"",
    *,
    content_length: str | None = None,
) -> bytes:
    """Start line, headers (pairs or whole lines), Content-Length (computed unless given), body."""
    lines = [start_line]
    for header in headers:
        lines.append(header if isinstance(header, str) else f"{header[0]}: {header[1]}")
    lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def build_request(
    method: str,
    uri: str,
    *,
    vias: Sequence[str],
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    routes: Sequence[str] = (),
    contact: str | None = None,
    max_forwards: str | None = "70",
    extra: Sequence[str] = (),
    body: bytes = b"",
    cseq_method: str | None = None,
    content_length: str | None = None,
) -> bytes:
    """A request with the headers a UA sends (§8.1.1), in a fixed order."""
    headers: list[tuple[str, str] | str] = [("Via", via) for via in vias]
    if max_forwards is not None:
        headers.append(("Max-Forwards", max_forwards))
    headers += [("Route", route) for route in routes]
    headers += [("From", from_), ("To", to), ("Call-ID", call_id), ("CSeq", f"{cseq} {cseq_method or method}")]
    if contact is not None:
        headers.append(("Contact", contact))
    headers += list(extra)
    return build_message(f"{method} {uri} SIP/2.0", headers, body, content_length=content_length)


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    vias: Sequence[str] | None = None,
    record_route: bool = True,
    contact: str | None = None,
    extra: Sequence[str] = (),
) -> bytes:
    """A response the way a UAS builds it (§8.2.6): the request's Vias, From, To (tagged),
    Call-ID, CSeq and, for a dialog-creating request, its Record-Route (§12.1.1).

    `vias` replaces the Via stack (to test how the ALG reads the next hop), `record_route=False`
    drops the Record-Route (a member that took the ALG out of the route set).
    """
    headers: list[tuple[str, str]] = [("Via", via) for via in (vias if vias is not None else request.values("via"))]
    if record_route:
        headers += [("Record-Route", value) for value in request.values("record-route")]
    to = request.first("to") or ""
    if to_tag is not None and param(to, "tag") is None:
        to = f"{to};tag={to_tag}"
    headers += [("From", request.first("from") or ""), ("To", to), ("Call-ID", request.call_id)]
    headers.append(("CSeq", request.first("cseq") or ""))
    if contact is not None:
        headers.append(("Contact", contact))
    return build_message(f"SIP/2.0 {status} {reason}", [*headers, *extra])


@dataclass
class UdpPeer:
    """One UDP socket on 127.0.0.1 playing a caller or a member.

    `expect` waits for the next message (OPTIONS probes aside) and fails with what did
    arrive, so a failing test says what the ALG did instead.
    """

    name: str
    answer_options: bool = False
    sock: socket.socket = field(init=False)
    inbox: queue.Queue[SipMessage] = field(init=False, default_factory=queue.Queue)
    probes: list[SipMessage] = field(init=False, default_factory=list)
    received: list[SipMessage] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.05)
        self._running = True
        self._thread = threading.Thread(target=self._read, name=f"peer-{self.name}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def uri(self, user: str) -> str:
        return f"sip:{user}@{HOST}:{self.port}"

    def via(self, branch: str | None = None) -> str:
        """Our Via, with `rport` so replies come back to this very socket (RFC 3581)."""
        return f"SIP/2.0/UDP {HOST}:{self.port};branch={branch or new_branch()};rport"

    def _read(self) -> None:
        while self._running:
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            message = SipMessage.parse(data, source[:2])
            if message.is_request and message.method == "OPTIONS":
                self.probes.append(message)  # only the ALG's health probes come to a peer
                if self.answer_options:
                    self.send(build_response(message, 200, "OK", to_tag="probe" + new_token()), source)
                continue
            self.received.append(message)
            self.inbox.put(message)

    def send(self, data: bytes, to: Address) -> None:
        self.sock.sendto(data, to)

    def recv(self, timeout: float = 2.0) -> SipMessage | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def expect(self, start: str, timeout: float = 2.0, *, note: str = "") -> SipMessage:
        """The next message, which must begin with `start` (e.g. "INVITE ", "SIP/2.0 200")."""
        message = self.recv(timeout)
        suffix = f" ({note})" if note else ""
        assert message is not None, f"{self.name}: nothing arrived within {timeout} s, expected {start!r}{suffix}"
        assert message.start_line.startswith(start), (
            f"{self.name}: expected {start!r}, got {message.describe()}{suffix}"
        )
        return message

    def expect_nothing(self, timeout: float = 0.5, *, note: str = "") -> None:
        message = self.recv(timeout)
        suffix = f" ({note})" if note else ""
        assert message is None, f"{self.name}: expected nothing, got {message.describe()}{suffix}"

    def drain(self) -> list[SipMessage]:
        drained = []
        while (message := self.recv(0.0)) is not None:
            drained.append(message)
        return drained

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=1.0)
        self.sock.close()

    def __enter__(self) -> UdpPeer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def expect_any(peers: Sequence[UdpPeer], start: str, timeout: float = 2.0) -> tuple[UdpPeer, SipMessage]:
    """The first of `peers` to receive a message; it must begin with `start`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for peer in peers:
            message = peer.recv(0.01)
            if message is not None:
                assert message.start_line.startswith(start), (
                    f"{peer.name}: expected {start!r}, got {message.describe()}"
                )
                return peer, message
    names = ", ".join(peer.name for peer in peers)
    raise AssertionError(f"none of {names} received anything within {timeout} s, expected {start!r}")


@dataclass
class Leg:
    """One UA's view of a dialog: enough to send in-dialog requests through the ALG (§12.2.1.1).

    `local` and `remote` are the From and To values (tags included) this side sends.
    """

    peer: UdpPeer
    call_id: str
    local: str
    remote: str
    target: str
    routes: list[str]
    cseq: int = 1

    def request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        branch: str | None = None,
        uri: str | None = None,
        routes: Sequence[str] | None = None,
        local: str | None = None,
        remote: str | None = None,
        extra: Sequence[str] = (),
        body: bytes = b"",
    ) -> bytes:
        """An in-dialog request; a new CSeq unless given (ACK and CANCEL reuse the INVITE's)."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        return build_request(
            method,
            uri or self.target,
            vias=[self.peer.via(branch)],
            from_=local or self.local,
            to=remote or self.remote,
            call_id=self.call_id,
            cseq=cseq,
            routes=self.routes if routes is None else routes,
            contact=f"<{self.peer.uri('ua')}>",
            extra=extra,
            body=body,
        )

    def with_remote_tag(self, tag: str) -> Leg:
        """The same call seen through another remote tag (a forked 2xx is another dialog)."""
        base = self.remote.split(";tag=")[0]
        return Leg(self.peer, self.call_id, self.local, f"{base};tag={tag}", self.target, self.routes, self.cseq)
