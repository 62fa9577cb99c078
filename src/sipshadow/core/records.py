"""Call records (CDRs): what the core knows of each INVITE attempt, as an output.

A record is made when its call ends, by the event that ends it, on every replica alike: the
times are UTC computed from the event's `now` and the replicated clock anchor
(`Gateway.utc_offset`), so the primary and the shadow build the same bytes. It leaves as an
output (`SendMessage` with transport `RECORDS`) and passes output commit like a datagram; a
new primary re-issues the unreleased ones, and the store is idempotent on `record_id`.

One record per INVITE attempt (a new INVITE with no To tag, retransmissions aside): its
answered dialog's, or its failure's. A late fork (a second 2xx with another To tag, RFC 3261
§13.2.2.4) is a second answered dialog and gets a record of its own.
"""

from __future__ import annotations

import hashlib

import msgspec

#: `SendMessage.transport` of a call record: a destination like a member, the record store.
RECORDS = "records"

#: Who ended the call (`CallRecord.ended_by`).
CALLER, CALLEE, GATEWAY = "caller", "callee", "gateway"
#: How it ended (`CallRecord.end_reason`): a BYE (§15), a CANCEL's 487 (§9), a final failure
#: (300-699), expiry (no final response by Timer C, or a confirmed dialog idle past its timeout),
#: or a 2xx whose Record-Route lost the ALG (it no longer sees the call's requests).
BYE, CANCELLED, FAILED, EXPIRED, OFF_PATH = "bye", "cancelled", "failed", "expired", "off-path"


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One call attempt's record. Times are UTC seconds since the Unix epoch (floats).

    `record_id`: 32 hex digits, a hash of (Call-ID, From tag, To tag, INVITE CSeq, our branch):
    the dialog's identity, stable across replicas and takeovers. `to_tag` is "" when the
    attempt got no tagged final response. `caller`, `member`: "host:port". `answered_at`: the
    first 2xx, None if unanswered. `status`: the final status (200 for an answered call; 408
    when Timer C expired). `duration_s`: answered to ended, to the microsecond; 0 when unanswered.
    """

    record_id: str
    call_id: str
    from_tag: str
    to_tag: str
    from_uri: str
    to_uri: str
    caller: str
    member: str
    transport: str
    invited_at: float
    answered_at: float | None
    ended_at: float
    status: int
    ended_by: str
    end_reason: str
    duration_s: float


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CallRecord)


def encode_record(record: CallRecord) -> bytes:
    """One record as a JSON object (bytes, no newline)."""
    return _encoder.encode(record)


def decode_record(data: bytes) -> CallRecord:
    """The inverse of `encode_record`; raises msgspec.DecodeError (a ValueError) on bad input."""
    return _decoder.decode(data)


def clean_text(text: str) -> str:
    """A header's text as a record stores it: the parser reads bytes as Latin-1, so UTF-8 is
    read back as UTF-8 (invalid bytes become U+FFFD), and NUL, which no SQL text column takes,
    becomes U+FFFD too. Any store then takes every record."""
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return text.encode("latin-1", "replace").decode("utf-8", "replace").replace("\x00", "\ufffd")


def record_id(call_id: str, from_tag: str, to_tag: str, cseq: int, branch: str) -> str:
    """The record's identity (32 hex digits): the dialog's, plus the attempt's CSeq and branch."""
    key = f"{call_id}\x1f{from_tag}\x1f{to_tag}\x1f{cseq}\x1f{branch}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(key, digest_size=16).hexdigest()
