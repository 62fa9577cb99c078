"""What a new primary re-sends at takeover: outputs the old one may not have sent, minus the
provisional responses their own final response makes stale.

The old primary released its outputs in log order, so when a 180 and the 200 of the same
transaction are both unreleased, the caller may already hold both; a re-sent 180 then lands
after the 200, which strict user agents (SIPp among them) treat as a protocol error. The final
response carries everything the provisional did (§13.2.2.4), so the provisional is dropped;
every other output is re-sent as it was (duplicates are otherwise harmless in SIP, §17).
"""

from __future__ import annotations

from sipshadow.core.actions import SendDatagram
from sipshadow.sip import SipParseError, parse_message

TransactionKey = tuple[str, str, str]


def without_stale_provisionals(outputs: list[SendDatagram]) -> list[SendDatagram]:
    """`outputs` in order, less each 1xx followed in the list by a final response of its transaction."""
    kept: list[SendDatagram] = []
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


def _response_key(output: SendDatagram) -> tuple[TransactionKey, int] | None:
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
