"""One link's security as pure state machines: handshake, then sealed messages only.

`StreamChannel` is one TCP connection (the replication link): the connecting side offers, the
listening side answers, and the first sealed frame proves the offerer holds the session; until
then the reader accepts nothing bigger than a handshake, and any refused frame ends the
connection (the owner closes it). `DatagramChannel` is one UDP peering (the heartbeats): both
ends offer until they hold a session, and a peer that restarts is recognised when its first
sealed frame opens under the session of a nonce it offered, echoing this node's current nonce.

A refusal is returned, never raised, and counted by reason (`refused`); a key mismatch, a
foreign node id or another protocol version also raise `alarm`, which the status shows until a
session is up. Nonces come from the shell (one per connection, one per detector start).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sipshadow.link.frames import (
    ANSWER,
    HANDSHAKE_MAX_BODY,
    HEADER,
    OFFER,
    SEALED,
    FrameReader,
    MessageCodec,
    RawFrame,
    Refused,
    StreamLost,
    read_datagram,
)
from sipshadow.link.handshake import Answer, Offer, handshake_key, open_handshake, seal_handshake
from sipshadow.link.session import SEALED_OVERHEAD, SEALED_PREFIX, Session

#: Every reason a frame is refused, as counted in `refused`.
REASONS = ("malformed", "version", "oversized", "key_mismatch", "undecodable", "foreign", "reflected", "stale",
           "out_of_session", "forged", "unexpected")  # fmt: skip
#: Reasons that say the pair is misconfigured rather than attacked or unlucky.
ALARMS = {
    "key_mismatch": "key mismatch: the peer's handshake does not verify under this node's replication.key",
    "foreign": "foreign node",
    "version": "protocol version mismatch",
}
#: Sessions a datagram peering keeps on offer, and peer nonces it remembers as retired.
CANDIDATES, RETIRED = 4, 16


@dataclass(slots=True)
class Received:
    """What one input produced: authenticated `messages` in order, bytes to `write` back, and
    the `refused` frame that stopped it (a stream must then be closed)."""

    messages: list[Any] = field(default_factory=list)
    write: bytes = b""
    refused: Refused | None = None
    ready: bool = False  #: a stream initiator's session just came up: send the first message


class Peering:
    """Who may talk to this node, and what was refused: shared by both kinds of channel."""

    def __init__(self, psk: bytes, me: str, peer: str | None) -> None:
        self.psk = psk
        self.handshake_key = handshake_key(psk)
        self.me = me
        self.peer = peer
        self.refused: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.alarm: str | None = None

    def open(self, frame: RawFrame) -> Offer | Answer | Refused:
        """The handshake in `frame` if it verifies under our key and comes from the expected
        peer for us (`check`), else why not."""
        message = open_handshake(frame, self.handshake_key)
        if isinstance(message, Refused):
            return message
        return self.check(message) or message

    def check(self, message: Offer | Answer) -> Refused | None:
        """`foreign` unless the handshake comes from the expected peer and is meant for us."""
        if message.sender == self.me:  # our own Offer sent back to us: anyone can do that
            return Refused("reflected", f"a handshake claiming this node's own id {message.sender!r}")
        if self.peer is not None and message.sender != self.peer:
            return Refused("foreign", f"node {message.sender!r} answered, expected {self.peer!r}")
        if message.recipient not in ("", self.me):
            return Refused("foreign", f"handshake addressed to {message.recipient!r}, this node is {self.me!r}")
        return None

    def refuse(self, refused: Refused, *, alarm: bool = True) -> Refused:
        """Count `refused`; with `alarm`, a misconfiguration reason raises the alarm."""
        self.refused[refused.reason] = self.refused.get(refused.reason, 0) + 1
        if alarm and refused.reason in ALARMS:
            self.alarm = f"{ALARMS[refused.reason]} ({refused.detail})"
        return refused

    def offer(self, nonce: bytes) -> bytes:
        return seal_handshake(Offer(self.me, self.peer or "", nonce), self.handshake_key)


class StreamChannel:
    """One connection's channel. `initiator`: this end connected and offers (`offer()`)."""

    def __init__(self, codec: MessageCodec, peering: Peering, *, nonce: bytes, initiator: bool) -> None:
        self.codec = codec
        self.peering = peering
        self.nonce = nonce
        self.initiator = initiator
        self.reader = FrameReader(HANDSHAKE_MAX_BODY)
        self.session: Session | None = None
        self.established = False

    @property
    def pending_bytes(self) -> int:
        return self.reader.pending_bytes

    def offer(self) -> bytes:
        """The initiator's first frame."""
        return self.peering.offer(self.nonce)

    def feed(self, data: bytes) -> Received:
        """Stream bytes in; messages, a reply, or the refusal that ends the connection out."""
        out = Received()
        try:
            for frame in self.reader.feed(data):
                refused = self._frame(frame, out)
                if refused is not None:
                    out.refused = self.peering.refuse(refused)
                    return out
        except StreamLost as lost:
            out.refused = self.peering.refuse(lost.refused)
        return out

    def _frame(self, frame: RawFrame, out: Received) -> Refused | None:
        if self.established:
            return self._sealed(frame, out)
        if self.session is not None and not self.initiator:
            refused = self._sealed(frame, out)  # the offerer's first sealed frame: the proof
            if refused is None:
                self._establish()
            return refused
        expected = ANSWER if self.initiator else OFFER
        if frame.kind != expected:
            return Refused("unexpected", f"frame kind {frame.kind} during the handshake")
        message = self.peering.open(frame)
        if isinstance(message, Refused):
            return message
        if isinstance(message, Answer):
            if message.echo != self.nonce:
                return Refused("stale", "an answer to another offer")
            self.session = Session.between(self.peering.psk, self.peering.me, self.nonce, message.sender,
                                           message.nonce)  # fmt: skip
            self._establish()
            out.ready = True
            return None
        assert isinstance(message, Offer)
        self.session = Session.between(self.peering.psk, self.peering.me, self.nonce, message.sender, message.nonce)
        answer = Answer(self.peering.me, message.sender, self.nonce, echo=message.nonce)
        out.write += seal_handshake(answer, self.peering.handshake_key)
        return None

    def _establish(self) -> None:
        self.established = True
        self.peering.alarm = None
        self.reader.max_body = self.codec.max_body + SEALED_OVERHEAD - HEADER.size

    def _sealed(self, frame: RawFrame, out: Received) -> Refused | None:
        if frame.kind != SEALED:
            return Refused("unexpected", f"frame kind {frame.kind} inside a session")
        assert self.session is not None
        plaintext = self.session.open(frame.data)
        if isinstance(plaintext, Refused):
            return plaintext
        message = self.codec.decode(plaintext)
        if isinstance(message, Refused):
            return message
        out.messages.append(message)
        return None

    def seal(self, messages: Sequence[Any]) -> bytes:
        """The frames of `messages`. Raises RuntimeError before the handshake is done."""
        if self.session is None or not self.established:
            raise RuntimeError("no session on this connection yet")
        return b"".join(self.session.seal(self.codec.encode(message)) for message in messages)


class DatagramChannel:
    """One UDP peering's channel: offers until a session is up, then seals and opens."""

    def __init__(self, codec: MessageCodec, peering: Peering, *, nonce: bytes) -> None:
        self.codec = codec
        self.peering = peering
        self.nonce = nonce
        self.session: Session | None = None
        self._candidates: deque[Session] = deque(maxlen=CANDIDATES)
        self._retired: deque[bytes] = deque(maxlen=RETIRED)

    def offer(self) -> bytes:
        """An Offer to send while `session` is None (once per beat interval)."""
        return self.peering.offer(self.nonce)

    def receive(self, data: bytes) -> Received:
        """One datagram in: a message, a handshake reply to send back, or a refusal (counted;
        it raises an alarm only while no session is up: anyone can send a datagram)."""
        out = Received()
        frame = read_datagram(data, max(HANDSHAKE_MAX_BODY, self.codec.max_body + SEALED_PREFIX.size + 16))
        refused = frame if isinstance(frame, Refused) else self._frame(frame, out)
        if refused is not None:
            # anyone can send a datagram: with a session up, only a key holder's (a foreign
            # node's verified handshake) raises the alarm
            alarm = self.session is None or refused.reason == "foreign"
            out.refused = self.peering.refuse(refused, alarm=alarm)
        return out

    def _frame(self, frame: RawFrame, out: Received) -> Refused | None:
        if frame.kind == SEALED:
            return self._sealed(frame, out)
        message = self.peering.open(frame)
        if isinstance(message, Refused):
            return message
        if message.nonce in self._retired:
            return Refused("stale", "a nonce of the peer's earlier life")
        if isinstance(message, Offer):
            current = self.session.peer_nonce if self.session is not None else None
            if message.nonce != current and all(c.peer_nonce != message.nonce for c in self._candidates):
                self._candidates.append(self._session(message))
            out.write = seal_handshake(Answer(self.peering.me, message.sender, self.nonce, echo=message.nonce),
                                       self.peering.handshake_key)  # fmt: skip
            return None
        if message.echo != self.nonce:
            return Refused("stale", "an answer to another offer")
        if self.session is None:
            self._adopt(self._session(message))
        elif self.session.peer_nonce != message.nonce:
            return Refused("unexpected", "an answer while a session is up")
        return None

    def _session(self, message: Offer | Answer) -> Session:
        return Session.between(self.peering.psk, self.peering.me, self.nonce, message.sender, message.nonce)

    def _adopt(self, session: Session) -> None:
        if self.session is not None and self.session.peer_nonce != session.peer_nonce:
            self._retired.append(self.session.peer_nonce)
        self.session = session
        self.peering.alarm = None
        stale = set(self._retired) | {session.peer_nonce}  # never adopt a used or retired nonce again
        for candidate in [c for c in self._candidates if c.peer_nonce in stale]:
            self._candidates.remove(candidate)

    def _sealed(self, frame: RawFrame, out: Received) -> Refused | None:
        if len(frame.data) < SEALED_OVERHEAD:
            return Refused("malformed", "sealed frame too short")
        session_id = frame.data[HEADER.size : HEADER.size + 8]
        session = self.session
        if session is None or session.session_id != session_id:
            session = next((c for c in self._candidates if c.session_id == session_id), None)
            if session is None:
                return Refused("out_of_session", session_id.hex())
        plaintext = session.open(frame.data)
        if isinstance(plaintext, Refused):
            return plaintext
        if session is not self.session:  # the peer (re)started and proved it knows our nonce
            self._candidates.remove(session)
            self._adopt(session)
        message = self.codec.decode(plaintext)
        if isinstance(message, Refused):
            return message
        out.messages.append(message)
        return None

    def seal(self, message: Any) -> bytes | None:
        """The sealed frame of `message`, or None while no session is up (send an Offer)."""
        session = self.session
        return session.seal(self.codec.encode(message)) if session is not None else None
