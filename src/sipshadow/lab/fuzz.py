"""A mutation fuzzer for a live SIP target: real SIPp messages, broken by hypothesis, sent as UDP.

The unit fuzz tests (`tests/unit/test_sip_fuzz.py`, `test_gateway_fuzz.py`) hold the parser
and the core to h11's invariant in memory. This one aims at a running `sipshadow serve` over
a real socket, while real calls go through it, so the whole path is under test: socket,
framing, parser, core, sender. Its corpus is what SIPp really put on the wire
(`corpus_from_sipp_trace`); `mutations` breaks one message 1 to 4 times with the `OPERATORS`;
`run_fuzzer` sends the results at a bounded rate and counts the answers.

Every mutated copy gets a Call-ID of its own (`fuzz_call_id`), so it can never join a real
call's dialog, and `;rport` on its top Via (RFC 3581), so the target's answers come back to
the fuzzer's socket and not to the sent-by port of the SIPp that was traced.

Reproducible: hypothesis draws every choice and `@seed` fixes them, so the same seed, rate and
seconds send the same messages in the same order (a run cut short by time sends a prefix of
them). Run it from a shell
(inside a test-bed namespace, for the lab) as
`python -m sipshadow.lab.fuzz --target HOST:PORT --trace FILE --seconds S --rate R --seed N`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from sipshadow.core.actions import Address
from sipshadow.lab.sipp import TESTBED_NETWORK

if TYPE_CHECKING:
    from hypothesis.vendor.pretty import RepresentationPrinter

__all__ = [
    "OPERATORS",
    "UDP_MAX",
    "FuzzReport",
    "Mutation",
    "Operator",
    "StopFuzzing",
    "corpus_from_sipp_trace",
    "for_each_mutation",
    "fuzz_call_id",
    "main",
    "mutations",
    "named_mutations",
    "run_fuzzer",
]

#: The largest UDP payload over IPv4: 65535 - 8 (UDP header) - 20 (IP header).
UDP_MAX = 65507
FUZZ_DOMAIN = b"sipshadow.invalid"  # RFC 6761: a name that never resolves
#: After the last datagram, replies are still read this long (the run's only overrun).
DRAIN_S = 0.2

# -- the corpus: SIPp's -trace_msg file ---------------------------------------------------------

#: What SIPp 3.6.1 writes before each message it traced (TRACE_MSG in src/socket.cpp): a rule
#: of 47 dashes and a timestamp, then the transport, "control " for a 3PCC twin socket, and
#: "message sent (N bytes):" or "message received [N] bytes :", then a blank line.
_TRACE_HEAD = re.compile(
    rb"^-{47} [^\n]*\n[A-Za-z0-9]+ (?:control )?message "
    rb"(?:sent \((?P<sent>\d+) bytes\):|received \[(?P<received>\d+)\] bytes :)\n\n",
    re.MULTILINE,
)
_START_LINE = re.compile(rb"(?:[!-~]+ [^ \r\n]+ SIP/2\.0|SIP/2\.0 \d{3} [^\r\n]*)\r\n")


def corpus_from_sipp_trace(path: Path) -> list[bytes]:
    """The SIP messages, sent and received, in a SIPp 3.6.1 ``-trace_msg`` file, in file order.

    Found by running SIPp (and matching its source, src/socket.cpp): each message follows a
    `_TRACE_HEAD` and is written verbatim, N bytes (N from the head: SIPp's own count of what
    went through the socket), CRLF line endings included, then one "\\n". So the N bytes are
    taken as they are. A trace whose CRLFs were turned into LFs on the way (an editor, git's
    autocrlf) is accepted when turning each LF back into CRLF gives exactly N bytes again.
    Blocks that do not pass either check are skipped: a trace cut off mid-message, a received
    message holding a NUL (SIPp prints those with %s, so they stop short), other text SIPp
    logs there (aborted calls), or anything that does not start with a SIP start line.
    """
    data = path.read_bytes()
    messages: list[bytes] = []
    position = 0
    while head := _TRACE_HEAD.search(data, position):
        size = int(head["sent"] or head["received"])
        start = head.end()
        message = data[start : start + size]
        if len(message) == size and data[start + size : start + size + 1] == b"\n" and _is_sip(message):
            messages.append(message)
            position = start + size + 1
            continue
        following = _TRACE_HEAD.search(data, start)
        end = following.start() if following else len(data)
        restored = re.sub(rb"\r?\n", b"\r\n", data[start:end].removesuffix(b"\n"))
        if len(restored) == size and _is_sip(restored):
            messages.append(restored)
        position = end
    return messages


def _is_sip(message: bytes) -> bool:
    """Whether `message` starts with a request or status line and has a whole header block."""
    return _START_LINE.match(message) is not None and b"\r\n\r\n" in message


# -- what keeps a mutated copy away from real calls ---------------------------------------------

_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[^\r\n]*(?:\r?\n[ \t]+[^\r\n]*)*", re.IGNORECASE | re.MULTILINE)
_VIA = re.compile(rb"^(?:via|v)[ \t]*:[^\r\n]*", re.IGNORECASE | re.MULTILINE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def fuzz_call_id(message: bytes, n: int) -> bytes:
    """`message` with every Call-ID header (``Call-ID:`` or compact ``i:``, folded lines and
    all) replaced by ``Call-ID: fuzz-{n}@sipshadow.invalid``, so no copy joins a real dialog.

    Only the header block is touched (a body may hold lines that look like headers). A message
    without a Call-ID gets one after its start line: a copy must never pass for a real call.
    """
    head, body = _head_and_body(message)
    value = b"Call-ID: fuzz-%d@%s" % (n, FUZZ_DOMAIN)
    rewritten, count = _CALL_ID.subn(lambda _: value, head)
    if count == 0:
        first, ending, rest = head.partition(b"\n")
        rewritten = first + ending + value + (b"\r\n" if first.endswith(b"\r") else b"\n") + rest
    return rewritten + body


def _answer_here(message: bytes) -> bytes:
    """`message` with ``;rport`` on its top Via (RFC 3581 §3): the target then answers the
    socket the copy came from, not the sent-by port of the traced SIPp (a real UAC's)."""
    head, body = _head_and_body(message)
    via = _VIA.search(head)
    if via is None:
        return message
    top, comma, rest = via.group().partition(b",")
    if b"rport" in top.lower():
        return message
    return head[: via.start()] + top.rstrip() + b";rport" + comma + rest + head[via.end() :] + body


def _head_and_body(message: bytes) -> tuple[bytes, bytes]:
    """The start line and headers, and the rest (blank line and body; b"" if none)."""
    end = _HEAD_END.search(message)
    return (message, b"") if end is None else (message[: end.start()], message[end.start() :])


# -- the mutation operators ---------------------------------------------------------------------
#
# Each is a plain function of the message so far and hypothesis' draw function; each returns
# the new bytes, which may exceed UDP_MAX (the strategy cuts them back).

Operator = Callable[[bytes, st.DrawFn], bytes]

#: Bytes a SIP parser has reason to fear, alone or among others.
JUNK_BYTES = (
    b"\x00", b"\r", b"\n", b"\r\n", b"\n\r", b"\xff", b"\x80", b"\xc3\x28", b" ", b"\t", b",", b";", b":", b"<",
    b">", b'"', b"\\", b"%00", b"=", b"@", b"\r\n ", b"\r\n\r\n",
)  # fmt: skip
#: Headers whose loss a proxy must notice (RFC 3261 §8.1.1, §20.14 Content-Length), with
#: their compact forms (§7.3.3).
VITAL_HEADERS = (b"via", b"v", b"cseq", b"from", b"f", b"to", b"t", b"max-forwards", b"content-length", b"l",
                 b"call-id", b"i", b"contact", b"m")  # fmt: skip
#: Header values that are syntactically odd rather than random.
ODD_VALUES = (
    b"", b" ", b"<>", b"<sip:>", b"sip:", b";;;", b",,,", b'"', b"\x00", b"SIP/2.0/UDP", b"SIP/2.0/UDP :0", b"1",
    b"-1", b"99999999999999999999 INVITE", b"1 FOO", b"<sip:a@[::1>", b"sip:a@b;lr;lr;lr=x",
)  # fmt: skip
#: Where `lie_content_length` takes its lies from.
HUGE_LENGTHS = (2**31, 2**32, 2**63, 2**64, 10**40, UDP_MAX, 65536)
NOT_NUMBERS = ("", "abc", "0x10", "1e3", "+5", "5 5", "5,5", "\u0663", "0" * 40 + "1", "-0")
#: Header lines `many_headers` repeats, each numbered twice.
MANY_HEADER_LINES = (
    b"Via: SIP/2.0/UDP 127.0.0.9:%d;branch=z9hG4bKfuzz%d", b"X-Fuzz-%d: %d", b"Record-Route: <sip:127.0.0.9:%d;lr>%d",
    b"Route: <sip:127.0.0.9:%d;lr>%d", b"Contact: <sip:f@127.0.0.9:%d>;q=0.%d", b"Subject: %d%d",
)  # fmt: skip
BAD_METHODS = (b"FOO", b"INVITEX", b"invite", b"", b"INV ITE", b"\x00INVITE", b"GET", b"ACK\x00")
BAD_VERSIONS = (b"SIP/3.0", b"SIP/2.1", b"SIP/2", b"SIP/", b"HTTP/1.1", b"sip/2.0", b"SIP/2.0 x", b"")
BAD_CODES = (b"99", b"700", b"2000", b"0", b"-1", b"1000", b"099", b"2x0", b"")
GARBAGE_URIS = (
    b"", b"sip:", b"<sip:a@127.0.0.1>", b"sip:a@b c", b"sip:[::1", b"http://x/", b"*", b"sip:a@127.0.0.1:99999",
    b"sip:%00@x", b"sip:a@;lr", b"sips:@:",
)  # fmt: skip

# The strategies the operators draw from, built once: building one costs more than a draw.
_TOKEN = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16).map(str.encode)
_BYTE_EDITS = st.binary(min_size=3, max_size=24)  # (2-byte position, new byte) triples
_JUNK = st.sampled_from(JUNK_BYTES) | st.binary(min_size=1, max_size=32)
_VALUES = st.sampled_from(ODD_VALUES) | st.text(max_size=64).map(str.encode) | st.binary(max_size=64)
_LIE_KINDS = st.sampled_from(("negative", "huge", "smaller", "larger", "not a number"))
_NEGATIVE = st.integers(max_value=-1)
_HUGE = st.sampled_from(HUGE_LENGTHS) | st.integers(min_value=65536)
_LESS = st.integers(1, 1000)
_MORE = st.integers(1, 70_000)
_NOT_NUMBER = st.sampled_from(NOT_NUMBERS) | st.text(max_size=12)
_LONG_NAMES = st.sampled_from((b"Subject", b"X-Fuzz", b"Via", b"Contact", b"Route", b"User-Agent", b"To"))
_LONG_SIZES = st.integers(10_000, 70_000)
_MANY_LINES = st.sampled_from(MANY_HEADER_LINES)
_MANY_COUNTS = st.integers(50, 3000)
_START_KINDS = st.sampled_from(("method", "version", "status", "uri"))
_METHODS = st.sampled_from(BAD_METHODS) | _TOKEN
_VERSIONS = st.sampled_from(BAD_VERSIONS)
_CODES = st.sampled_from(BAD_CODES) | st.integers().map(lambda code: str(code).encode())
_URIS = st.sampled_from(GARBAGE_URIS) | st.binary(max_size=40)
_LINE_ENDINGS = st.sampled_from((b"\n", b"\r"))
_SEPARATORS = st.sampled_from((b"", b"\r\n", b"\r\n\r\n", b"\n", b"\x00"))

_HEADER_NAME = re.compile(rb"[ \t]*([^:\r\n]*?)[ \t]*:")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The head's lines (start line first, each with its own line ending) and the rest."""
    lines = data.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if index > 0 and line in (b"\r\n", b"\n", b"\r"):
            return lines[:index], b"".join(lines[index:])
    return lines, b""


def _name(line: bytes) -> bytes:
    """A header line's name, lower case (b"" when it has no colon)."""
    match = _HEADER_NAME.match(line)
    return match.group(1).lower() if match else b""


def _ending(line: bytes) -> bytes:
    return line[len(line.rstrip(b"\r\n")) :] or b"\r\n"


def _header_index(draw: st.DrawFn, head: list[bytes]) -> int | None:
    """A header line of `head`, or the start line when there is no header; None if no line."""
    if not head:
        return None
    return draw(st.integers(1, len(head) - 1)) if len(head) > 1 else 0


def replace_bytes(data: bytes, draw: st.DrawFn) -> bytes:
    """Overwrite 1-8 bytes anywhere with any byte values (one draw: position and value triples)."""
    edits = draw(_BYTE_EDITS)
    if not data:
        return edits[:8]
    buffer = bytearray(data)
    for at in range(0, len(edits) - 2, 3):
        buffer[int.from_bytes(edits[at : at + 2]) % len(buffer)] = edits[at + 2]
    return bytes(buffer)


def delete_range(data: bytes, draw: st.DrawFn) -> bytes:
    """Cut a run of bytes out (from one byte to all the rest)."""
    start = draw(st.integers(0, max(0, len(data) - 1)))
    return data[:start] + data[start + draw(st.integers(1, max(1, len(data) - start))) :]


def insert_bytes(data: bytes, draw: st.DrawFn) -> bytes:
    """Insert NUL, high bytes, a lone CR or LF, SIP punctuation or random bytes."""
    position = draw(st.integers(0, len(data)))
    return data[:position] + draw(_JUNK) + data[position:]


def duplicate_header(data: bytes, draw: st.DrawFn) -> bytes:
    """Repeat one header line, right after itself or elsewhere in the head."""
    head, rest = _lines(data)
    index = _header_index(draw, head)
    if index is None:
        return data
    head.insert(draw(st.integers(1, len(head))), head[index])
    return b"".join(head) + rest


def delete_header(data: bytes, draw: st.DrawFn) -> bytes:
    """Remove one header line, often a vital one (Via, CSeq, From, To, Max-Forwards, ...)."""
    head, rest = _lines(data)
    vital = [index for index in range(1, len(head)) if _name(head[index]) in VITAL_HEADERS]
    if draw(st.booleans()) and vital:
        index: int | None = draw(st.sampled_from(vital))
    else:
        index = _header_index(draw, head)
    if index is None:
        return data
    del head[index]
    return b"".join(head) + rest


def replace_header_value(data: bytes, draw: st.DrawFn) -> bytes:
    """Give one header a new value: odd syntax, arbitrary text (UTF-8) or arbitrary bytes."""
    head, rest = _lines(data)
    index = _header_index(draw, head)
    if index is None:
        return data
    line = head[index]
    colon = line.find(b":")
    name = line[: colon + 1] if colon >= 0 else b"X-Fuzz:"
    head[index] = name + b" " + draw(_VALUES) + _ending(line)
    return b"".join(head) + rest


def lie_content_length(data: bytes, draw: st.DrawFn) -> bytes:
    """Make Content-Length lie: negative, huge, too small, too large or not a number (every
    Content-Length line gets the lie; a message without one gets one)."""
    head, rest = _lines(data)
    blank = _LINE_BREAK.match(rest)
    actual = len(rest) - blank.end() if blank else 0  # the body's true length
    kind = draw(_LIE_KINDS)
    if kind == "negative":
        lie = str(draw(_NEGATIVE))
    elif kind == "huge":
        lie = str(draw(_HUGE))
    elif kind == "smaller":
        lie = str(actual - draw(_LESS))
    elif kind == "larger":
        lie = str(actual + draw(_MORE))
    else:
        lie = draw(_NOT_NUMBER)
    value = lie.encode()
    lengths = [index for index in range(1, len(head)) if _name(head[index]) in (b"content-length", b"l")]
    if not lengths:
        head.append(b"Content-Length: " + value + b"\r\n")
    for index in lengths:
        line = head[index]
        head[index] = line[: line.find(b":") + 1] + b" " + value + _ending(line)
    return b"".join(head) + rest


def truncate(data: bytes, draw: st.DrawFn) -> bytes:
    """Cut the datagram short anywhere (mid-line, mid-header block, mid-body)."""
    return data[: draw(st.integers(0, max(0, len(data) - 1)))]


def long_header_line(data: bytes, draw: st.DrawFn) -> bytes:
    """Add one header line of 10-70 kB (as much of it as fits in a datagram)."""
    head, rest = _lines(data)
    name = draw(_LONG_NAMES)
    filler = draw(_TOKEN)
    size = min(draw(_LONG_SIZES), max(0, UDP_MAX - len(data) - len(name) - 4))
    line = name + b": " + (filler * (size // len(filler) + 1))[:size] + b"\r\n"
    head.insert(draw(st.integers(min(1, len(head)), len(head))), line)
    return b"".join(head) + rest


def many_headers(data: bytes, draw: st.DrawFn) -> bytes:
    """Add 50-3000 short header lines (repeats of one, numbered), as many as fit."""
    head, rest = _lines(data)
    template = draw(_MANY_LINES)
    lines, room = [], UDP_MAX - len(data)
    for number in range(draw(_MANY_COUNTS)):
        line = template % (number, number) + b"\r\n"
        room -= len(line)
        if room < 0:
            break
        lines.append(line)
    position = draw(st.integers(min(1, len(head)), len(head)))
    return b"".join(head[:position] + lines + head[position:]) + rest


def mangle_start_line(data: bytes, draw: st.DrawFn) -> bytes:
    """Break the start line: unknown method, bad SIP version, a status code out of range
    (99, 700, 2000, ...) or a garbage request-URI."""
    head, rest = _lines(data)
    first = head[0] if head else b""
    parts = first.rstrip(b"\r\n").split(b" ", 2)
    is_request = len(parts) == 3 and not first.startswith(b"SIP/")
    method, uri, version = parts if is_request else (b"INVITE", b"sip:fuzz@127.0.0.1", b"SIP/2.0")
    kind = draw(_START_KINDS)
    if kind == "status":
        reason = parts[2] if len(parts) == 3 and not is_request else b"Fuzz"
        line = b"SIP/2.0 " + draw(_CODES) + b" " + reason
    elif kind == "version" and not is_request and len(parts) == 3:
        line = draw(_VERSIONS) + b" " + parts[1] + b" " + parts[2]
    else:
        method = draw(_METHODS) if kind == "method" else method
        uri = draw(_URIS) if kind == "uri" else uri
        version = draw(_VERSIONS) if kind == "version" else version
        line = method + b" " + uri + b" " + version
    return b"".join([line + _ending(first), *head[1:]]) + rest


def swap_line_endings(data: bytes, draw: st.DrawFn) -> bytes:
    """Turn CRLF into a bare LF or a bare CR, in the header block only or everywhere."""
    ending = draw(_LINE_ENDINGS)
    if draw(st.booleans()):
        return _LINE_BREAK.sub(ending, data)
    head, body = _head_and_body(data)
    return _LINE_BREAK.sub(ending, head) + body


def append_message(data: bytes, draw: st.DrawFn) -> bytes:
    """Put a second message (a copy of this one) after the first in the same datagram."""
    return data + draw(_SEPARATORS) + data


#: The operators `mutations` draws from: 1 to 4 per message, repeats allowed.
OPERATORS: tuple[Operator, ...] = (
    replace_bytes, delete_range, insert_bytes, duplicate_header, delete_header, replace_header_value,
    lie_content_length, truncate, long_header_line, many_headers, mangle_start_line, swap_line_endings,
    append_message,
)  # fmt: skip


# -- the strategies -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mutation:
    """One mutated message and the names of the operators that made it, in order."""

    data: bytes
    operators: tuple[str, ...]

    def __repr__(self) -> str:  # hypothesis shows the example it stopped on: keep it short
        return f"Mutation({len(self.data)} bytes, {', '.join(self.operators)})"

    def _repr_pretty_(self, printer: RepresentationPrinter, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis' own printer would show every field, bytes and all


_CALL_NUMBERS = st.integers()
_OPERATOR_LISTS = st.lists(st.sampled_from(OPERATORS), min_size=1, max_size=4)


@st.composite
def _mutated(draw: st.DrawFn, messages: st.SearchStrategy[bytes]) -> Mutation:
    data = _answer_here(fuzz_call_id(draw(messages), draw(_CALL_NUMBERS)))
    applied: list[str] = []
    for operator in draw(_OPERATOR_LISTS):
        data = operator(data, draw)[:UDP_MAX]
        applied.append(operator.__name__)
    return Mutation(data, tuple(applied))


def named_mutations(corpus: Sequence[bytes]) -> st.SearchStrategy[Mutation]:
    """Like `mutations`, each message with the names of the operators applied."""
    if not corpus:
        raise ValueError("the corpus is empty: nothing to mutate")
    return _mutated(st.sampled_from(tuple(corpus)))


def mutations(corpus: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """A corpus message with its own fuzz Call-ID, after 1-4 of the `OPERATORS`; at most
    `UDP_MAX` bytes."""
    return named_mutations(corpus).map(lambda mutation: mutation.data)


class StopFuzzing(Exception):
    """Raised by a `for_each_mutation` consumer to end the run before its count."""


#: Mutations drawn per hypothesis example. The engine's own work per example (its record of
#: choices tried, its mutations of earlier examples) costs more than drawing one message, so
#: batches of 8 more than double the rate (measured here: 280/s one at a time, 610/s in eights).
BATCH = 8


def for_each_mutation(corpus: Sequence[bytes], *, count: int, seed: int, consume: Callable[[Mutation], None]) -> None:
    """Draw up to `count` mutated messages, the same ones for the same seed and count, and hand
    each to `consume` as it is drawn; `consume` raises `StopFuzzing` to end early.

    Hypothesis runs outside a test here: generation only (no shrinking, no database, quiet),
    every health check off, since a slow or large example is the point, not a problem. To
    hypothesis a stop is a failing example, which it runs once more to report: from the stop
    on, nothing more is handed out.
    """
    if count <= 0:
        return
    batch = min(BATCH, count)
    handed = 0
    stopped = False

    @fixed_seed(seed)
    @settings(
        max_examples=-(-count // batch), deadline=None, database=None, derandomize=False, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False,
        print_blob=False,
    )  # fmt: skip
    @given(st.lists(named_mutations(corpus), min_size=batch, max_size=batch))
    def each(mutations: list[Mutation]) -> None:
        nonlocal handed, stopped
        for mutation in mutations:
            if stopped or handed == count:
                raise StopFuzzing
            handed += 1
            try:
                consume(mutation)
            except StopFuzzing:
                stopped = True
                raise

    with contextlib.suppress(StopFuzzing):
        each()


# -- the sender ---------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """What a run sent and what came back.

    `sent_by_operator` counts each operator once per datagram it shaped (so its sum exceeds
    `sent`). `answers` counts replies by status code ("400", "481", ...), "other" for a reply
    without a SIP status line, and "none" for datagrams sent minus replies (a lower bound on the
    unanswered: the ALG answers at most once per datagram). `errors` are failed sends.
    """

    sent: int = 0
    sent_by_operator: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0


_STATUS_LINE = re.compile(rb"SIP/2\.0 (\d{3}) ")


def run_fuzzer(
    target: Address,
    corpus: list[bytes],
    *,
    seconds: float,
    rate: float,
    seed: int,
    source: Address = ("0.0.0.0", 0),
) -> FuzzReport:
    """Send mutated `corpus` messages to `target` at about `rate` datagrams/s for `seconds`.

    Bounded both ways: at most ``int(rate * seconds) + 1`` datagrams, and it returns at most
    `DRAIN_S` after `seconds` (the time left to read late replies). One UDP socket bound to
    `source` sends and reads every reply; the pacing wait is spent reading them. The target
    must be a loopback address or in the test bed's network: this sends garbage.
    """
    _check_target(target[0])
    if not (seconds > 0 and rate > 0):
        raise ValueError(f"seconds and rate must be positive, got {seconds} and {rate}")
    limit = int(rate * seconds) + 1
    report = FuzzReport()
    used: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(source)
        sock.setblocking(False)
        started = time.monotonic()
        deadline = started + seconds
        attempts = 0

        def send(mutation: Mutation) -> None:
            nonlocal attempts
            if attempts >= limit or time.monotonic() >= deadline:
                raise StopFuzzing
            attempts += 1
            try:
                sock.sendto(mutation.data, target)
            except OSError:
                report.errors += 1
            else:
                report.sent += 1
                used.update(mutation.operators)
            _read_replies(sock, answers, until=min(deadline, started + attempts / rate))

        for_each_mutation(corpus, count=limit, seed=seed, consume=send)
        _read_replies(sock, answers, until=time.monotonic() + DRAIN_S)
        report.seconds = round(time.monotonic() - started, 3)
    answers["none"] = max(0, report.sent - sum(answers.values()))
    report.sent_by_operator = dict(sorted(used.items()))
    report.answers = dict(sorted(answers.items()))
    return report


def _check_target(host: str) -> None:
    """Refuse a target off loopback and off the test bed: the lab's network rule."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"fuzz target must be an IP address, got {host!r}") from None
    if not (address.is_loopback or address in TESTBED_NETWORK):
        raise ValueError(f"fuzz target must be on loopback or in {TESTBED_NETWORK}, got {host}")


def _read_replies(sock: socket.socket, answers: Counter[str], *, until: float) -> None:
    """Count every reply that arrives before `until` (at least those already queued)."""
    while True:
        try:
            reply = sock.recv(65535)
        except BlockingIOError:
            left = until - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return
            continue
        except OSError:  # an ICMP error queued on the socket: no reply to count
            continue
        status = _STATUS_LINE.match(reply)
        answers[status.group(1).decode() if status else "other"] += 1


# -- the command line ---------------------------------------------------------------------------


def _address(text: str, default_port: int | None = None) -> Address:
    host, colon, port = text.rpartition(":")
    if not colon:
        if default_port is None:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        host, port = text, str(default_port)
    try:
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer from a shell; print the report as JSON (and write it to --report)."""
    parser = argparse.ArgumentParser(prog="python -m sipshadow.lab.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, type=_address, help="HOST:PORT to fuzz")
    parser.add_argument("--trace", required=True, action="append", type=Path, help="SIPp -trace_msg file (repeat)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="datagrams per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=lambda text: _address(text, 0), default=("0.0.0.0", 0), help="HOST[:PORT]")
    parser.add_argument("--report", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)
    corpus = [message for path in args.trace for message in corpus_from_sipp_trace(path)]
    if not corpus:
        parser.error(f"no SIP message in {', '.join(map(str, args.trace))}")
    try:
        report = run_fuzzer(args.target, corpus, seconds=args.seconds, rate=args.rate, seed=args.seed,
                            source=args.source)  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"fuzz: {error}", file=sys.stderr)
        return 1
    document = {
        "target": f"{args.target[0]}:{args.target[1]}", "seed": args.seed, "rate": args.rate,
        "corpus": len(corpus), "hypothesis": hypothesis.__version__, **asdict(report),
    }  # fmt: skip
    text = json.dumps(document, indent=2)
    if args.report is not None:
        args.report.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
