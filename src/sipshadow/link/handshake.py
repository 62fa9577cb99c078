"""The handshake: two nonces, one from each end, bound to both node ids under the pre-shared key.

    initiator → responder   Offer(sender, recipient, nonce_i)
    responder → initiator   Answer(sender, recipient, nonce_r, echo=nonce_i)

Both frames carry an HMAC-SHA256 under a key derived from the pre-shared key, so a peer with
another key is told apart from noise (`key_mismatch`: the operator's most likely mistake). The
Answer echoes the initiator's nonce, so it is fresh for the initiator; the responder learns the
initiator knows its nonce only from the first sealed frame under the session both derive
(`sipshadow.link.session`), which neither a replayed Offer nor a replayed Answer can produce.
Nonces come from the caller (the shell's entropy): this module draws nothing.
"""

from __future__ import annotations

import hmac

import msgspec

from sipshadow.link.frames import ANSWER, HEADER, MAGIC, OFFER, VERSION, RawFrame, Refused
from sipshadow.link.session import NONCE_BYTES, derive

MAC_BYTES = 32
#: Node ids are names, not payloads.
MAX_ID_CHARS = 64


class Offer(msgspec.Struct, array_like=True, tag=OFFER):
    """I am `sender`, I want a session with `recipient` ("" when I do not know its id yet)."""

    sender: str
    recipient: str
    nonce: bytes


class Answer(msgspec.Struct, array_like=True, tag=ANSWER):
    """The answer to the Offer that carried `echo`: my own fresh `nonce`."""

    sender: str
    recipient: str
    nonce: bytes
    echo: bytes


Handshake = Offer | Answer
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Handshake)


def handshake_key(psk: bytes) -> bytes:
    """The key that signs Offers and Answers (never the session keys)."""
    return derive(psk, b"handshake", 32)


def seal_handshake(message: Handshake, key: bytes) -> bytes:
    """One whole handshake frame: header, msgpack body, HMAC-SHA256 under `key`."""
    body = _encoder.encode(message)
    header = HEADER.pack(MAGIC, VERSION, OFFER if isinstance(message, Offer) else ANSWER, len(body) + MAC_BYTES)
    return header + body + hmac.digest(key, header + body, "sha256")


def open_handshake(frame: RawFrame, key: bytes) -> Handshake | Refused:
    """The Offer or Answer in `frame`, or why not (`key_mismatch`, `undecodable`). Never raises."""
    signed, mac = frame.data[:-MAC_BYTES], frame.data[-MAC_BYTES:]
    if len(frame.data) < HEADER.size + MAC_BYTES or not hmac.compare_digest(hmac.digest(key, signed, "sha256"), mac):
        return Refused("key_mismatch", "handshake MAC does not verify under this node's key")
    try:
        message: Handshake = _decoder.decode(signed[HEADER.size :])
    except msgspec.DecodeError as error:
        return Refused("undecodable", str(error))
    if (OFFER if isinstance(message, Offer) else ANSWER) != frame.kind:
        return Refused("undecodable", "kind does not match the body")
    nonces = (message.nonce, message.echo) if isinstance(message, Answer) else (message.nonce,)
    if any(len(nonce) != NONCE_BYTES for nonce in nonces):
        return Refused("undecodable", "nonce of the wrong size")
    if len(message.sender) > MAX_ID_CHARS or len(message.recipient) > MAX_ID_CHARS or not message.sender:
        return Refused("undecodable", "node id empty or too long")
    return message
