"""SIP messages (RFC 3261 §7, §20, §25): parse, inspect, rewrite, serialize; `stream` frames them on TCP.

Pure: no clock, no randomness, no sockets. Every malformed input raises `SipParseError`
with a reason; anything else escaping this package is a bug.
"""

from sipshadow.sip.errors import SipParseError
from sipshadow.sip.headers import NameAddr, Via, parse_cseq, split_header_values
from sipshadow.sip.message import SipMessage, parse_message

__all__ = [
    "NameAddr",
    "SipMessage",
    "SipParseError",
    "Via",
    "parse_cseq",
    "parse_message",
    "split_header_values",
]
