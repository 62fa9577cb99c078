"""What a new primary re-sends at takeover: outputs the old one may not have sent, less those
it provably sent and those a later output makes stale.

The old primary released its outputs in log order after the shadow's acknowledgement, and the
shadow's idea of what was released lags by a round trip; so some of what it re-sends did go
out. Duplicates are harmless to a compliant UA (§17), but strict ones (SIPp among them) abort a
call on a request they already answered or on a 180 after its 200. Two proofs are used:

- a forwarded request whose response (same branch, our Via) is among the datagrams the shadow
  has seen since reached its next hop: it is not re-sent;
- a provisional response followed in the list by a final response of its transaction carries
  nothing the final does not (§13.2.2.4): it is not re-sent.

Everything else is re-sent as it was.
"""

from __future__ import annotations

from collections.abc import Iterable

from sipshadow.core.actions import SendMessage
from sipshadow.sip import SipParseError, parse_message

TransactionKey = tuple[str, str, str]
_RESPONSE = b"SIP/2.0 "


def resend_plan(unreleased: list[SendMessage], seen: Iterable[bytes]) -> list[SendMessage]:
    """The outputs to re-send, in order: `unreleased` less what `seen` (datagrams received
    since, responses among them) proves delivered, less stale provisionals. Never raises:
    what does not parse is simply kept."""
    branches = [None if output.data.startswith(_RESPONSE) else _top_branch(output.data) for output in unreleased]
    needles = [branch.encode("latin-1", "replace") for branch in branches if branch]
    delivered: set[str | None] = set()
    if needles:
        for data in seen:
            if data.startswith(_RESPONSE) and any(needle in data for needle in needles):
                delivered.add(_top_branch(data))
    delivered.discard(None)
    kept = [output for output, branch in zip(unreleased, branches, strict=True) if branch not in delivered]
    return without_stale_provisionals(kept)


def _top_branch(data: bytes) -> str | None:
    try:
        via = parse_message(data).top_via
    except SipParseError:
        return None
    return via.branch if via is not None else None


def without_stale_provisionals(outputs: list[SendMessage]) -> list[SendMessage]:
    """`outputs` in order, less each 1xx followed in the list by a final response of its transaction."""
    kept: list[SendMessage] = []
    answered: set[TransactionKey] = set()
    for output in reversed(outputs):
        key = _response_key(output)
        if key is not None:
            transaction, status = key
            if status >= 200:
                answered.add(transaction)
            elif transaction in answered:
                continue
        kept.append(output)
    kept.reverse()
    return kept


def _response_key(output: SendMessage) -> tuple[TransactionKey, int] | None:
    """(Call-ID, CSeq, top Via branch) and the status of a response; None for anything else."""
    if not output.data.startswith(b"SIP/2.0 "):
        return None
    try:
        response = parse_message(output.data)
        via = response.top_via
        cseq = response.first("cseq")
    except SipParseError:
        return None
    if via is None or cseq is None or response.call_id is None:
        return None
    return (response.call_id, cseq.strip(), via.branch or ""), response.status
