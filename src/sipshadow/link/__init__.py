"""HMAC'd, versioned framing for any union of msgspec messages (the replication link, heartbeats)."""

from sipshadow.link.frames import HEADER, MAC_BYTES, MAGIC, VERSION, FrameCodec, FrameDecoder, Refused, StreamLost

__all__ = ["HEADER", "MAC_BYTES", "MAGIC", "VERSION", "FrameCodec", "FrameDecoder", "Refused", "StreamLost"]
