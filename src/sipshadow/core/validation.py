"""Request validation (RFC 3261 §8.2, §16.3): the whole request is checked before any state changes.

A request that fails a syntax check raises `SipParseError` (400 here; the parser already
gave 505 for another SIP version); one the ALG cannot serve raises `Rejection` with the final
response it deserves (416 here for a Request-URI scheme it cannot route; the gateway raises
420 for the Proxy-Require extensions `unsupported_extensions` finds).
"""

from __future__ import annotations

from sipshadow.sip import NameAddr, SipMessage, SipParseError, Via, split_header_values
from sipshadow.sip.headers import Uri

DEFAULT_MAX_FORWARDS = 70
#: §20.22: Max-Forwards is an integer in 0-255 (written 1*DIGIT, so 0068 is 68).
MAX_FORWARDS_LIMIT = 255
#: Request-URI schemes a request can be routed with (RFC 3261 §19.1, RFC 3966 tel).
ROUTABLE_SCHEMES = frozenset({"sip", "sips", "tel"})
_SINGLE_VALUED = {"call-id": "Call-ID", "cseq": "CSeq", "from": "From", "to": "To"}


class Rejection(Exception):
    """A request the ALG answers itself with `status` and `reason` (and `extra`, whole header
    lines such as `Unsupported: foo`), counted in `Counters.rejected` (an ACK is never answered)."""

    def __init__(self, status: int, reason: str, extra: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.extra = extra


def check_request(request: SipMessage) -> tuple[Via, int]:
    """The checks of §16.3 items 1-3; returns the top Via and Max-Forwards (70 if absent).

    Raises `SipParseError` (status 400) or `Rejection` (416); deciding 483 for Max-Forwards 0
    is the gateway's. Also frames the body (§18.3) and parses every Route, so that nothing
    later can fail half way.
    """
    via = request.top_via
    if via is None:
        raise SipParseError("Missing Via")
    seen = dict.fromkeys(_SINGLE_VALUED, 0)
    for entry in request.headers:
        if entry[0] in seen:
            seen[entry[0]] += 1
    for key, found in seen.items():
        if found != 1:
            raise SipParseError(f"{'Missing' if found == 0 else 'Duplicate'} {_SINGLE_VALUED[key]}")
    cseq = request.cseq
    assert cseq is not None
    if cseq[1] != request.method:
        raise SipParseError("CSeq method does not match request method")
    if not request.call_id:
        raise SipParseError("Empty Call-ID")
    request.from_tag  # noqa: B018 -- parses From, raising on a malformed one
    request.to_tag  # noqa: B018
    max_forwards = _max_forwards(request.first("max-forwards"))
    request.frame_datagram()
    for value in request.values("route"):
        _check_route(value)
    request_uri = Uri.parse(request.uri)
    if request_uri.scheme not in ROUTABLE_SCHEMES:
        raise Rejection(416, "Unsupported URI Scheme")
    if request_uri.headers:
        raise SipParseError("Headers in Request-URI")  # §19.1.1; RFC 4475 §3.1.2.11
    return via, max_forwards


def unsupported_extensions(request: SipMessage) -> list[str]:
    """The Proxy-Require option tags we do not support: all of them, in order (§16.3 item 5, §20.29).

    Raises `SipParseError` on a malformed Proxy-Require list.
    """
    options: list[str] = []
    for entry in request.headers:
        if entry[0] == "proxy-require":
            options.extend(option for option in split_header_values(entry[2]) if option)
    return options


def _max_forwards(value: str | None) -> int:
    if value is None:
        return DEFAULT_MAX_FORWARDS
    digits = value.lstrip("0") or "0"  # int() of thousands of digits would raise ValueError
    if not (value.isascii() and value.isdigit()) or len(digits) > 3 or int(digits) > MAX_FORWARDS_LIMIT:
        raise SipParseError("Bad Max-Forwards")
    return int(digits)


def _check_route(value: str) -> None:
    uri = NameAddr.parse(value).uri
    if Uri.parse(uri).scheme not in ("sip", "sips"):
        raise SipParseError("Route is not a SIP URI")
