"""Responses the gateway itself generates (400, 481, 483, 503, 200 to OPTIONS), §8.2.6.

To-tags are derived from the request (§16.11 stateless style), so the same request always
gets the same tag on the primary and on the shadow without a random draw.
"""

from __future__ import annotations

import hashlib
import re

from sipshadow.sip import NameAddr, SipMessage, SipParseError, Via
from sipshadow.sip.headers import COMPACT_FORMS

_COPIED = ("via", "from", "to", "call-id", "cseq")
_SERVER = "Server: sipshadow"


def derived_tag(*parts: str) -> str:
    """A stable token from the request's identity (same input, same tag, on every replica):
    "ss" and 12 hex digits."""
    text = "\x1f".join(parts).encode("latin-1", "replace")
    return "ss" + hashlib.blake2b(text, digest_size=6).hexdigest()


def build_reply(request: SipMessage, status: int, reason: str, extra: tuple[str, ...] = ()) -> bytes:
    """A response to `request` carrying its Via, From, To, Call-ID and CSeq, then `extra`
    (whole header lines), Server and Content-Length: 0; the whole datagram as bytes.

    Above 100 an untagged To gets a `derived_tag` (§8.2.6.2). Never raises for a request that
    passed `parse_message`.
    """
    lines = [f"SIP/2.0 {status} {reason}"]
    for key, name, value, raw in request.headers:
        if key not in _COPIED:
            continue
        if key == "to" and status > 100 and _untagged(value):
            tag = derived_tag(request.call_id or "", request.first("from") or "", value)
            value = f"{value};tag={tag}"
            raw = None
        lines.append(raw if raw is not None else f"{name}: {value}")
    lines.extend(extra)
    lines.extend((_SERVER, "Content-Length: 0", "", ""))
    return "\r\n".join(lines).encode("latin-1")


def _untagged(to_value: str) -> bool:
    try:
        return NameAddr.parse(to_value).tag is None
    except SipParseError:
        return False


def salvage_reply(data: bytes, status: int, reason: str) -> tuple[bytes, Via] | None:
    """Answer a request too broken to parse, if its Via can still be found (RFC 4475 §3.1.2).

    Returns the response and the Via it goes back to, or None when no usable Via exists.
    """
    text = data.decode("latin-1")
    head = text.split("\r\n\r\n", 1)[0].replace("\r\n ", " ").replace("\r\n\t", " ")
    lines = head.split("\r\n")
    if not lines or lines[0][:4].upper() == "SIP/":
        return None
    kept: list[str] = []
    top_via: Via | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        key = COMPACT_FORMS.get(key, key)
        if not colon or key not in _COPIED or "\r" in line or "\n" in line:
            continue
        if key == "via" and top_via is None:
            top_via = lenient_via(value)
            if top_via is None:
                return None
        kept.append(f"{name.strip()}:{value}")  # "V\x0b:" strips to "V": the reply must parse
    if top_via is None:
        return None
    reply = "\r\n".join([f"SIP/2.0 {status} {reason}", *kept, _SERVER, "Content-Length: 0", "", ""])
    return reply.encode("latin-1"), top_via


_SENT_BY_RE = re.compile(
    r"\s*SIP\s*/\s*[0-9.]+\s*/\s*[A-Za-z0-9.!%*_+`'~-]+\s+([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
)


def lenient_via(value: str) -> Via | None:
    """The top Via for a reply, even when its parameters or version are broken (RFC 4475
    §3.1.2.1 `;;,;,,`, §3.1.2.16 `SIP/7.0/UDP`): only its sent-by is needed, and the reply
    goes to the source address anyway (§18.2.2)."""
    first = value.split(",", 1)[0]
    try:
        return Via.parse(first)
    except SipParseError:
        pass
    match = _SENT_BY_RE.match(first)
    if match is None:
        return None
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and not 0 < port < 65536:
        return None
    return Via("UDP", match.group(1).lower(), port, {})
