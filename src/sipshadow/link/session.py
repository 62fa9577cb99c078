"""Per-session keys and sealed frames: ChaCha20-Poly1305 under keys derived by HKDF-SHA256.

A session exists between two node ids once both have contributed a fresh nonce (see
`sipshadow.link.handshake`). From the pre-shared key, both nonces and both ids, HKDF derives
a session id (8 bytes, in clear on every frame so the receiver finds the session) and one key
per direction, so a frame can never be reflected back to its sender. A sealed frame:

    header (SEALED) | session id (8) | counter u64 | ciphertext | Poly1305 tag (16)

Header, session id and counter are the associated data, so they are authenticated but clear.
The counter is the AEAD nonce: it starts at 1 and strictly increases per sender, and the
receiver accepts only a counter above the highest it has opened, so a replayed, duplicated or
reordered frame is refused as stale. Both ends derive the same session from the same inputs,
whichever started the handshake: ids and nonces are ordered by node id.
"""

from __future__ import annotations

import itertools
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sipshadow.link.frames import HEADER, MAGIC, SEALED, VERSION, Refused

NONCE_BYTES = 16
SESSION_ID_BYTES = 8
TAG_BYTES = 16
SEALED_PREFIX = struct.Struct("!8sQ")
#: Header, session id and counter: the associated data of every sealed frame.
SEALED_OVERHEAD = HEADER.size + SEALED_PREFIX.size + TAG_BYTES


def derive(psk: bytes, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """`length` bytes of HKDF-SHA256 (RFC 5869) from `psk`, separated by `info`."""
    return HKDF(algorithm=SHA256(), length=length, salt=salt, info=b"".join((b"sipshadow/2 ", info))).derive(psk)


class Session:
    """One session's two directions: `seal` for frames this node sends, `open` for the peer's."""

    __slots__ = ("_counter", "_recv", "_send", "peer_id", "peer_nonce", "received", "send_key", "session_id")

    def __init__(self, session_id: bytes, peer_id: str, peer_nonce: bytes, send_key: bytes, recv_key: bytes) -> None:
        self.session_id = session_id
        self.peer_id = peer_id
        self.peer_nonce = peer_nonce
        self.received = 0
        self.send_key = send_key  #: for the one process that seals this node's beats
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._counter = itertools.count(1)  # next() is atomic: a beat thread may seal beside the loop

    @classmethod
    def between(cls, psk: bytes, me: str, my_nonce: bytes, peer: str, peer_nonce: bytes) -> Session:
        """The session of `me` and `peer` for this pair of nonces (equal on both ends)."""
        (low_id, low_nonce), (high_id, high_nonce) = sorted(((me, my_nonce), (peer, peer_nonce)))
        info = b"".join((b"session\x00", low_id.encode(), b"\x00", high_id.encode()))
        material = derive(psk, info, SESSION_ID_BYTES + 64, salt=b"".join((low_nonce, high_nonce)))
        low_key, high_key = material[SESSION_ID_BYTES : SESSION_ID_BYTES + 32], material[SESSION_ID_BYTES + 32 :]
        send, recv = (low_key, high_key) if me == low_id else (high_key, low_key)
        return cls(material[:SESSION_ID_BYTES], peer, peer_nonce, send, recv)

    def seal(self, plaintext: bytes) -> bytes:
        """A whole sealed frame carrying `plaintext` (a `MessageCodec` encoding)."""
        counter = next(self._counter)
        header = HEADER.pack(MAGIC, VERSION, SEALED, SEALED_PREFIX.size + len(plaintext) + TAG_BYTES)
        # b"".join, never `+` on bytes: compiled by mypyc 1.19 some bytes concatenations leak
        # their result (tests/native/leak_pair.py holds this module to it)
        clear = b"".join((header, SEALED_PREFIX.pack(self.session_id, counter)))
        return b"".join((clear, self._send.encrypt(_nonce(counter), plaintext, clear)))

    def open(self, frame: bytes) -> bytes | Refused:
        """The plaintext of the peer's sealed `frame`, or why it is refused: `out_of_session`
        (another session's id), `stale` (a counter not above the last opened), `forged` (the
        tag does not verify: tampered, or sealed under other keys). Never raises."""
        if len(frame) < SEALED_OVERHEAD:
            return Refused("malformed", "sealed frame too short")
        session_id, counter = SEALED_PREFIX.unpack_from(frame, HEADER.size)
        if session_id != self.session_id:
            return Refused("out_of_session", session_id.hex())
        if counter <= self.received:
            return Refused("stale", f"counter {counter}, already at {self.received}")
        clear_end = HEADER.size + SEALED_PREFIX.size
        try:
            plaintext = self._recv.decrypt(_nonce(counter), frame[clear_end:], frame[:clear_end])
        except InvalidTag:
            return Refused("forged", f"counter {counter}")
        self.received = counter
        return plaintext


def _nonce(counter: int) -> bytes:
    return b"".join((b"\0\0\0\0", counter.to_bytes(8, "big")))
