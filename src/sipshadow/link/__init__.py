"""The pair's links, secured: handshake, per-session AEAD, bounded frames (pure, no I/O)."""

from sipshadow.link.channel import ALARMS, REASONS, DatagramChannel, Peering, Received, StreamChannel
from sipshadow.link.frames import HANDSHAKE_MAX_BODY, HEADER, MAGIC, VERSION, MessageCodec, Refused, StreamLost
from sipshadow.link.session import NONCE_BYTES

__all__ = [
    "ALARMS", "HANDSHAKE_MAX_BODY", "HEADER", "MAGIC", "NONCE_BYTES", "REASONS", "VERSION", "DatagramChannel",
    "MessageCodec", "Peering", "Received", "Refused", "StreamChannel", "StreamLost",
]  # fmt: skip
