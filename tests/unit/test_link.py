"""The pair's links (version 3): handshake, sealed sessions, bounded frames, refusals counted.

Both ends of a connection (`StreamChannel`) or a heartbeat peering (`DatagramChannel`) are
wired together in memory: bytes out of one are fed to the other, and an attacker is a test
that keeps bytes and feeds them again, elsewhere or later. No socket, no clock; nonces are
fixed bytes. Replaces the v1 tests of the HMAC-per-frame format (`test_wire.py`,
`test_mutants_link.py`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from sipshadow.detect.heartbeat import CODEC as BEAT_CODEC
from sipshadow.detect.heartbeat import MAX_EPOCH, Heartbeat, check_beat
from sipshadow.link import (
    ALARMS,
    HANDSHAKE_MAX_BODY,
    HEADER,
    MAGIC,
    NONCE_BYTES,
    REASONS,
    VERSION,
    DatagramChannel,
    MessageCodec,
    Peering,
    Received,
    Refused,
    StreamChannel,
    StreamLost,
)
from sipshadow.link.frames import ANSWER, OFFER, SEALED, FrameReader, RawFrame, read_datagram
from sipshadow.link.handshake import MAC_BYTES, MAX_ID_CHARS, Answer, Offer, handshake_key, seal_handshake
from sipshadow.link.session import SEALED_OVERHEAD, SEALED_PREFIX, Session
from sipshadow.replication.log import LogEntry
from sipshadow.replication.wire import (
    CODEC,
    MAX_BODY_BYTES,
    Ack,
    Entries,
    Handoff,
    HandoffRequest,
    Hello,
    PayloadRequest,
    Payloads,
    Snapshot,
    SnapshotRows,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
MiB = 1024 * 1024
#: The largest sealed-frame body an authenticated replication peer may announce.
SEALED_LIMIT = CODEC.max_body + SEALED_OVERHEAD - HEADER.size

#: One message of every replication kind (the sizeable ones make the frames outgrow the handshake limit).
MESSAGES = [
    Hello("shadow", 3),
    Snapshot(7, 3, {"dialogs": [], "note": "s" * 2000}, parts=1),
    SnapshotRows([["call-1", 1, b"row"], ["call-2", 2, None]]),
    Entries([LogEntry(8, 0, 1.5, "127.0.0.1", 5060, b"INVITE " * 600, None, (0.25,), 77)], released=7),
    Ack(8),
    PayloadRequest([8, 9]),
    Payloads([(8, b"INVITE ..."), (9, b"")]),
    Handoff(9, 3, b"t" * 32),
    HandoffRequest("keepalived MASTER"),
]
BEAT = Heartbeat("node-b", 1, "primary", 9, sent_at=12.5)


def nonce(byte: int) -> bytes:
    return bytes([byte]) * NONCE_BYTES


# --- stream helpers -----------------------------------------------------------------------


def stream_pair(
    *,
    shadow: Peering | None = None,
    primary: Peering | None = None,
    shadow_nonce: bytes = nonce(1),
    primary_nonce: bytes = nonce(2),
    codec: MessageCodec = CODEC,
) -> tuple[StreamChannel, StreamChannel]:
    """(initiator, responder): the shadow connects to the primary; no byte exchanged yet."""
    initiator = StreamChannel(codec, shadow or Peering(KEY, "shadow", "primary"), nonce=shadow_nonce, initiator=True)
    responder = StreamChannel(codec, primary or Peering(KEY, "primary", "shadow"), nonce=primary_nonce, initiator=False)
    return initiator, responder


def shake(initiator: StreamChannel, responder: StreamChannel) -> None:
    """Offer and Answer: the initiator's session is up, the responder's awaits its first sealed frame."""
    answered = responder.feed(initiator.offer())
    assert answered.refused is None and answered.write and not answered.messages
    ready = initiator.feed(answered.write)
    assert ready.refused is None and ready.ready and not ready.write
    assert initiator.established and not responder.established


def connected(**kwargs: Any) -> tuple[StreamChannel, StreamChannel]:
    """A pair after the handshake and the initiator's Hello: both ends established."""
    initiator, responder = stream_pair(**kwargs)
    shake(initiator, responder)
    got = responder.feed(initiator.seal([Hello("shadow", 1)]))
    assert got.refused is None and got.messages == [Hello("shadow", 1)]
    assert responder.established
    return initiator, responder


def feed_bytewise(channel: StreamChannel, data: bytes) -> Received:
    """`data` one byte at a time; everything received, stopped at the first refusal."""
    total = Received()
    for index in range(len(data)):
        got = channel.feed(data[index : index + 1])
        total.messages += got.messages
        total.write += got.write
        total.ready |= got.ready
        if got.refused is not None:
            total.refused = got.refused
            break
    return total


def refused_as(received: Received, reason: str) -> None:
    assert reason in REASONS
    assert received.refused is not None, f"expected a refusal ({reason}), got {received}"
    assert received.refused.reason == reason, received.refused
    assert not received.messages


def header(length: int, *, kind: int = SEALED, version: int = VERSION, magic: bytes = MAGIC) -> bytes:
    return HEADER.pack(magic, version, kind, length)


# --- datagram helpers ---------------------------------------------------------------------


def node(me: str, peer: str, byte: int, key: bytes = KEY) -> DatagramChannel:
    return DatagramChannel(BEAT_CODEC, Peering(key, me, peer), nonce=nonce(byte))


def datagram_pair() -> tuple[DatagramChannel, DatagramChannel]:
    return node("node-a", "node-b", 0xA), node("node-b", "node-a", 0xB)


def offer_answer(offerer: DatagramChannel, answerer: DatagramChannel) -> None:
    """`offerer` offers, `answerer` answers, `offerer` adopts the session."""
    answered = answerer.receive(offerer.offer())
    assert answered.refused is None and answered.write
    got = offerer.receive(answered.write)
    assert got.refused is None and not got.write and offerer.session is not None


def beat(sender: DatagramChannel, receiver: DatagramChannel, message: Heartbeat = BEAT) -> Received:
    frame = sender.seal(message)
    assert frame is not None
    return receiver.receive(frame)


def flipped(frame: bytes, index: int, mask: int = 0x01) -> bytes:
    damaged = bytearray(frame)
    damaged[index] ^= mask
    return bytes(damaged)


# --- a codec of our own (built in the tests, not at import) ---------------------------------


class Ping(msgspec.Struct, array_like=True, tag=1):
    seq: int


class Note(msgspec.Struct, array_like=True, tag=2):
    text: str


def small_codec() -> MessageCodec:
    return MessageCodec({Ping: 7, Note: 9}, Ping | Note, 64)


def note_of_plaintext(size: int) -> Note:
    """A Note whose encoding (kind byte and msgpack) is exactly `size` bytes."""
    return next(Note("x" * n) for n in range(size) if len(small_codec().encode(Note("x" * n))) == size)


# === replication messages through a stream pair ============================================


def test_the_messages_cover_every_replication_kind() -> None:
    assert {type(message) for message in MESSAGES} == set(CODEC.kinds)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_every_replication_message_round_trips_both_ways_after_the_handshake(message: object) -> None:
    shadow, primary = connected()
    assert primary.feed(shadow.seal([message])).messages == [message]
    assert shadow.feed(primary.seal([message])).messages == [message]


def test_many_messages_in_one_chunk_arrive_in_order() -> None:
    shadow, primary = connected()
    got = primary.feed(shadow.seal(MESSAGES * 3))
    assert got.refused is None and got.messages == MESSAGES * 3
    assert primary.pending_bytes == 0
    got = shadow.feed(primary.seal(MESSAGES))
    assert got.refused is None and got.messages == MESSAGES


def test_the_whole_conversation_fed_byte_by_byte_arrives_intact() -> None:
    shadow, primary = stream_pair()
    answered = feed_bytewise(primary, shadow.offer())
    assert answered.refused is None and answered.write
    ready = feed_bytewise(shadow, answered.write)
    assert ready.ready and ready.refused is None
    got = feed_bytewise(primary, shadow.seal([Hello("shadow", 1), *MESSAGES]))
    assert got.refused is None and got.messages == [Hello("shadow", 1), *MESSAGES]
    got = feed_bytewise(shadow, primary.seal(MESSAGES))
    assert got.refused is None and got.messages == MESSAGES
    assert primary.pending_bytes == shadow.pending_bytes == 0


def test_the_answer_arrives_only_with_the_offers_last_byte() -> None:
    shadow, primary = stream_pair()
    offer = shadow.offer()
    assert primary.feed(offer[:-1]).write == b""
    assert primary.pending_bytes == len(offer) - 1
    assert primary.feed(offer[-1:]).write


def test_only_the_initiator_is_told_its_session_is_ready() -> None:
    shadow, primary = stream_pair()
    answered = primary.feed(shadow.offer())
    assert not answered.ready
    assert shadow.feed(answered.write).ready
    assert not primary.feed(shadow.seal([Ack(1)])).ready


def test_nothing_can_be_sealed_before_the_session_is_up() -> None:
    shadow, primary = stream_pair()
    with pytest.raises(RuntimeError):
        shadow.seal([Ack(1)])
    primary.feed(shadow.offer())
    with pytest.raises(RuntimeError):  # answered, but the initiator has not proved itself yet
        primary.seal([Ack(1)])


def test_a_replication_message_of_exactly_the_max_body_arrives_and_one_byte_more_is_oversized() -> None:
    overhead = len(CODEC.encode(Payloads([(1, b"x" * 70_000)]))) - 70_000
    exact = Payloads([(1, b"x" * (MAX_BODY_BYTES - overhead))])
    assert len(CODEC.encode(exact)) == MAX_BODY_BYTES
    shadow, primary = connected()
    assert shadow.feed(primary.seal([exact])).messages == [exact]
    too_big = Payloads([(1, b"x" * (MAX_BODY_BYTES - overhead + 1))])
    refused_as(shadow.feed(primary.seal([too_big])), "oversized")


# === before the handshake ==================================================================


def test_the_responder_refuses_a_sealed_frame_before_an_offer() -> None:
    shadow, _ = connected()
    _, fresh = stream_pair()
    refused_as(fresh.feed(shadow.seal([Ack(1)])), "unexpected")
    assert not fresh.established and fresh.session is None


def test_the_responder_refuses_a_second_offer_instead_of_the_proof() -> None:
    shadow, primary = stream_pair()
    primary.feed(shadow.offer())
    refused_as(primary.feed(shadow.offer()), "unexpected")
    assert not primary.established


def test_the_initiator_refuses_an_offer() -> None:
    shadow, _ = stream_pair()
    other, _ = stream_pair(shadow=Peering(KEY, "primary", "shadow"))
    got = shadow.feed(other.offer())
    refused_as(got, "unexpected")
    assert not shadow.established and not got.ready


def test_the_initiator_refuses_a_sealed_frame_before_the_answer() -> None:
    _, primary = connected()
    fresh, _ = stream_pair()
    refused_as(fresh.feed(primary.seal([Ack(1)])), "unexpected")


@pytest.mark.parametrize("initiator", [True, False], ids=["initiator", "responder"])
def test_a_32_mib_header_is_refused_as_soon_as_its_8_bytes_are_in(initiator: bool) -> None:
    shadow, primary = stream_pair()
    channel = shadow if initiator else primary
    announced = header(32 * MiB, kind=ANSWER if initiator else OFFER)
    assert channel.feed(announced[:-1]).refused is None
    got = channel.feed(announced[-1:])
    refused_as(got, "oversized")
    assert channel.pending_bytes == HEADER.size  # no byte of the body was waited for
    assert not got.write


@pytest.mark.parametrize("kind", [OFFER, SEALED])
def test_before_the_handshake_a_body_of_the_handshake_limit_is_awaited_and_one_byte_more_is_oversized(
    kind: int,
) -> None:
    _, primary = stream_pair()
    assert primary.feed(header(HANDSHAKE_MAX_BODY, kind=kind)).refused is None
    _, primary = stream_pair()
    refused_as(primary.feed(header(HANDSHAKE_MAX_BODY + 1, kind=kind)), "oversized")


def test_after_answering_the_responder_keeps_the_handshake_limit_until_the_proof() -> None:
    shadow, primary = stream_pair()
    primary.feed(shadow.offer())
    refused_as(primary.feed(header(HANDSHAKE_MAX_BODY + 1)), "oversized")
    assert primary.pending_bytes == HEADER.size


def test_the_initiators_first_sealed_frame_may_not_exceed_the_handshake_limit() -> None:
    """The proof is read under the pre-auth limit, so the shadow's first message must be small."""
    shadow, primary = stream_pair()
    shake(shadow, primary)
    refused_as(primary.feed(shadow.seal([MESSAGES[1]])), "oversized")


@pytest.mark.parametrize("initiator", [True, False], ids=["initiator", "responder"])
def test_after_the_handshake_the_limit_is_the_codecs_max_body_plus_the_sealing(initiator: bool) -> None:
    shadow, primary = connected()
    channel = shadow if initiator else primary
    assert channel.feed(header(SEALED_LIMIT)).refused is None
    assert channel.pending_bytes == HEADER.size
    shadow, primary = connected()
    channel = shadow if initiator else primary
    refused_as(channel.feed(header(SEALED_LIMIT + 1)), "oversized")
    refused_as(connected()[0 if initiator else 1].feed(header(32 * MiB)), "oversized")


def test_a_small_codecs_message_of_exactly_its_max_body_passes_and_one_byte_more_is_oversized() -> None:
    shadow, primary = stream_pair(codec=small_codec())
    shake(shadow, primary)
    assert primary.feed(shadow.seal([Ping(1)])).messages == [Ping(1)]
    exact = note_of_plaintext(64)
    assert primary.feed(shadow.seal([exact])).messages == [exact]
    refused_as(primary.feed(shadow.seal([note_of_plaintext(65)])), "oversized")


# === replays ================================================================================


def test_a_replayed_offer_gets_an_answer_but_never_a_session() -> None:
    shadow, _ = connected()
    captured_offer = shadow.offer()
    captured_frames = shadow.seal([Ack(1), Ack(2)])
    _, victim = stream_pair(primary_nonce=nonce(3))
    answered = victim.feed(captured_offer)
    assert answered.refused is None and answered.write
    refused_as(victim.feed(captured_frames), "out_of_session")  # sealed under the first connection's session
    assert not victim.established
    with pytest.raises(RuntimeError):
        victim.seal([Snapshot(1, 1, {})])


def test_a_replayed_answer_is_stale_for_an_initiator_with_another_nonce() -> None:
    shadow, primary = stream_pair()
    captured_answer = primary.feed(shadow.offer()).write
    fresh, _ = stream_pair(shadow_nonce=nonce(4))
    got = fresh.feed(captured_answer)
    refused_as(got, "stale")
    assert not got.ready and not fresh.established


def test_a_sealed_frame_fed_twice_is_stale() -> None:
    shadow, primary = connected()
    frame = shadow.seal([Ack(5)])
    assert primary.feed(frame).messages == [Ack(5)]
    refused_as(primary.feed(frame), "stale")


def test_frames_swapped_in_order_are_stale() -> None:
    shadow, primary = connected()
    first, second = shadow.seal([Ack(5)]), shadow.seal([Ack(6)])
    assert primary.feed(second).messages == [Ack(6)]
    refused_as(primary.feed(first), "stale")


def test_a_frame_of_another_session_under_the_same_key_is_out_of_session() -> None:
    shadow, _ = connected()
    _, other_primary = connected(shadow_nonce=nonce(5), primary_nonce=nonce(6))
    refused_as(other_primary.feed(shadow.seal([Ack(1)])), "out_of_session")


def test_messages_before_a_refused_frame_in_the_same_chunk_are_delivered_and_later_ones_are_not() -> None:
    shadow, primary = connected()
    good, bad, after = shadow.seal([Ack(1)]), shadow.seal([Ack(2)]), shadow.seal([Ack(3)])
    got = primary.feed(good + flipped(bad, -1) + after)
    assert got.messages == [Ack(1)]
    assert got.refused == Refused("forged", "counter 3")


# === tampering and reflection ================================================================

SEALED_ACK_LENGTH = SEALED_OVERHEAD + len(CODEC.encode(Ack(2)))


@pytest.mark.parametrize(
    ("index", "reason"),
    [
        (0, "malformed"),  # magic
        (2, "version"),
        (3, "malformed"),  # kind 33: unknown
        (HEADER.size, "out_of_session"),  # first byte of the session id
        (HEADER.size + 7, "out_of_session"),  # its last
        (HEADER.size + 8, "forged"),  # the counter's high byte: a far higher counter
        (HEADER.size + SEALED_PREFIX.size - 1, "forged"),  # its low byte: 2 -> 3
        (HEADER.size + SEALED_PREFIX.size, "forged"),  # ciphertext
        (SEALED_ACK_LENGTH - 1, "forged"),  # tag
    ],
)
def test_a_flipped_byte_of_a_sealed_frame_is_refused_for_what_it_hit(index: int, reason: str) -> None:
    shadow, primary = connected()
    refused_as(primary.feed(flipped(shadow.seal([Ack(2)]), index)), reason)


def test_a_sealed_frame_with_any_byte_flipped_never_yields_a_message() -> None:
    for index in range(SEALED_ACK_LENGTH):
        for mask in (0x01, 0x80):
            shadow, primary = connected()
            got = primary.feed(flipped(shadow.seal([Ack(2)]), index, mask))
            assert not got.messages, (index, mask)
            assert got.refused is not None or primary.pending_bytes > 0, (index, mask)  # refused, or waiting


def test_a_sealed_frame_cannot_be_reflected_to_its_sender() -> None:
    shadow, primary = connected()  # the shadow sent counter 1, the primary opened it
    refused_as(shadow.feed(shadow.seal([Ack(1)])), "forged")  # counter 2: fresh, but the keys differ
    primary.seal([Snapshot(1, 1, {})])  # counter 1 would be stale anyway: reflect counter 2
    refused_as(primary.feed(primary.seal([Snapshot(1, 1, {})])), "forged")


def test_both_ends_derive_the_same_session_and_opposite_keys() -> None:
    mine = Session.between(KEY, "a", nonce(1), "b", nonce(2))
    theirs = Session.between(KEY, "b", nonce(2), "a", nonce(1))
    assert mine.session_id == theirs.session_id
    assert theirs.open(mine.seal(b"\x04hi")) == b"\x04hi"
    assert mine.open(theirs.seal(b"\x04ho")) == b"\x04ho"
    assert Session.between(OTHER_KEY, "a", nonce(1), "b", nonce(2)).session_id != mine.session_id
    assert Session.between(KEY, "a", nonce(1), "c", nonce(2)).session_id != mine.session_id
    assert Session.between(KEY, "a", nonce(3), "b", nonce(2)).session_id != mine.session_id


def test_a_sealed_frame_shorter_than_its_overhead_is_malformed() -> None:
    session = Session.between(KEY, "a", nonce(1), "b", nonce(2))
    assert session.open(session.seal(b"")[:-1]) == Refused("malformed", "sealed frame too short")


# === key mismatch and alarms ===================================================================


def test_an_offer_under_another_key_is_a_key_mismatch_and_raises_the_alarm() -> None:
    shadow, primary = stream_pair(shadow=Peering(OTHER_KEY, "shadow", "primary"))
    got = primary.feed(shadow.offer())
    refused_as(got, "key_mismatch")
    assert not got.write
    assert primary.peering.alarm is not None and "key" in primary.peering.alarm
    assert primary.peering.alarm.startswith(ALARMS["key_mismatch"])


def test_an_answer_under_another_key_is_a_key_mismatch_for_the_initiator() -> None:
    shadow, _ = stream_pair()
    answer = seal_handshake(Answer("primary", "shadow", nonce(2), echo=nonce(1)), handshake_key(OTHER_KEY))
    refused_as(shadow.feed(answer), "key_mismatch")
    assert shadow.peering.alarm is not None and "key" in shadow.peering.alarm


def test_the_alarm_stands_until_a_session_is_proved_and_then_clears() -> None:
    peering = Peering(KEY, "primary", "shadow")
    wrong, first = stream_pair(shadow=Peering(OTHER_KEY, "shadow", "primary"), primary=peering)
    first.feed(wrong.offer())
    assert peering.alarm is not None
    shadow, primary = stream_pair(primary=peering, primary_nonce=nonce(7))
    shake(shadow, primary)
    assert peering.alarm is not None  # answered, not proved: a replayed Offer would get this far
    primary.feed(shadow.seal([Hello("shadow", 1)]))
    assert peering.alarm is None


def test_the_initiators_alarm_clears_with_its_answer() -> None:
    peering = Peering(KEY, "shadow", "primary")
    first, _ = stream_pair(shadow=peering)
    first.feed(seal_handshake(Answer("intruder", "shadow", nonce(2), echo=nonce(1)), handshake_key(KEY)))
    assert peering.alarm is not None and peering.alarm.startswith(ALARMS["foreign"])
    shadow, primary = stream_pair(shadow=peering, shadow_nonce=nonce(8))
    shake(shadow, primary)
    assert peering.alarm is None


def test_stale_and_forged_frames_raise_no_alarm() -> None:
    shadow, primary = connected()
    frame = shadow.seal([Ack(1)])
    primary.feed(frame)
    primary.feed(frame)
    primary.feed(flipped(shadow.seal([Ack(2)]), -1))
    assert primary.peering.alarm is None


# === foreign ids =============================================================================


@pytest.mark.parametrize(
    ("offerer", "receiver"),
    [
        (Peering(KEY, "intruder", "primary"), Peering(KEY, "primary", "shadow")),  # not the expected peer
        (Peering(KEY, "shadow", "other-primary"), Peering(KEY, "primary", "shadow")),  # meant for another node
    ],
    ids=["other-sender", "other-recipient"],
)
def test_an_offer_from_or_to_a_foreign_node_is_refused_and_raises_the_alarm(
    offerer: Peering, receiver: Peering
) -> None:
    shadow, primary = stream_pair(shadow=offerer, primary=receiver)
    got = primary.feed(shadow.offer())
    refused_as(got, "foreign")
    assert not got.write and primary.session is None
    assert receiver.alarm is not None and receiver.alarm.startswith(ALARMS["foreign"])


def test_peers_that_do_not_know_each_others_ids_yet_may_meet() -> None:
    shadow, primary = stream_pair(shadow=Peering(KEY, "shadow", None), primary=Peering(KEY, "primary", None))
    shake(shadow, primary)
    assert primary.feed(shadow.seal([Ack(1)])).messages == [Ack(1)]


@pytest.mark.parametrize(
    "answer",
    [
        Answer("intruder", "shadow", nonce(2), echo=nonce(1)),
        Answer("primary", "someone-else", nonce(2), echo=nonce(1)),
    ],
    ids=["other-sender", "other-recipient"],
)
def test_an_answer_from_or_to_a_foreign_node_is_refused(answer: Answer) -> None:
    shadow, _ = stream_pair()
    got = shadow.feed(seal_handshake(answer, handshake_key(KEY)))
    refused_as(got, "foreign")
    assert not shadow.established and not got.ready


# === handshake frames that do not parse ======================================================


@pytest.mark.parametrize(
    "offer",
    [
        Offer("shadow", "primary", b"short"),
        Offer("shadow", "primary", nonce(1) + b"x"),
        Offer("", "primary", nonce(1)),
        Offer("s" * (MAX_ID_CHARS + 1), "primary", nonce(1)),
        Offer("shadow", "p" * (MAX_ID_CHARS + 1), nonce(1)),
    ],
    ids=["short-nonce", "long-nonce", "empty-sender", "long-sender", "long-recipient"],
)
def test_a_signed_offer_with_a_bad_nonce_or_id_is_undecodable(offer: Offer) -> None:
    _, primary = stream_pair(primary=Peering(KEY, "primary", None))
    refused_as(primary.feed(seal_handshake(offer, handshake_key(KEY))), "undecodable")
    assert primary.session is None


def test_a_signed_answer_with_a_bad_echo_is_undecodable() -> None:
    shadow, _ = stream_pair()
    answer = Answer("primary", "shadow", nonce(2), echo=b"short")
    refused_as(shadow.feed(seal_handshake(answer, handshake_key(KEY))), "undecodable")


def test_an_offer_body_under_an_answer_header_is_undecodable() -> None:
    body = msgspec.msgpack.encode(Offer("primary", "shadow", nonce(2)))
    signed = header(len(body) + MAC_BYTES, kind=ANSWER) + body
    frame = signed + hmac.digest(handshake_key(KEY), signed, "sha256")
    shadow, _ = stream_pair()
    refused_as(shadow.feed(frame), "undecodable")


def test_a_handshake_frame_too_short_for_its_mac_is_a_key_mismatch() -> None:
    shadow, _ = stream_pair()
    refused_as(shadow.feed(header(MAC_BYTES - 1, kind=ANSWER) + b"\0" * (MAC_BYTES - 1)), "key_mismatch")


def test_the_handshake_is_signed_under_a_derived_key_not_the_psk() -> None:
    assert handshake_key(KEY) != KEY and len(handshake_key(KEY)) == 32
    frame = seal_handshake(Offer("shadow", "primary", nonce(1)), KEY)
    _, primary = stream_pair()
    refused_as(primary.feed(frame), "key_mismatch")


# === protocol version ======================================================================


@pytest.mark.parametrize("version", [1, 2, 4])
def test_a_stream_header_of_another_version_is_refused_and_raises_the_alarm(version: int) -> None:
    _, primary = stream_pair()
    refused_as(primary.feed(header(40, kind=OFFER, version=version)), "version")
    assert primary.peering.alarm is not None and primary.peering.alarm.startswith(ALARMS["version"])


@pytest.mark.parametrize("version", [1, 2, 4])
def test_a_datagram_of_another_version_is_refused(version: int) -> None:
    a, b = datagram_pair()
    offer_answer(a, b)
    frame = a.seal(BEAT)
    assert frame is not None
    refused_as(b.receive(frame[:2] + bytes([version]) + frame[3:]), "version")
    assert b.peering.alarm is not None and b.peering.alarm.startswith(ALARMS["version"])


def test_the_frame_header_is_magic_version_kind_length() -> None:
    frame = Session.between(KEY, "a", nonce(1), "b", nonce(2)).seal(b"\x07\x01")
    assert frame[: HEADER.size] == b"SS" + bytes([3, SEALED]) + (len(frame) - HEADER.size).to_bytes(4, "big")
    assert VERSION == 3 and MAGIC == b"SS" and HEADER.size == 8


# === refusal counts ===========================================================================


def test_every_reason_starts_at_zero() -> None:
    assert Peering(KEY, "a", "b").refused == dict.fromkeys(REASONS, 0)


def test_refusals_are_counted_by_reason() -> None:
    peering = Peering(KEY, "primary", "shadow")
    shadow, primary = connected(primary=peering)
    frame = shadow.seal([Ack(1)])
    primary.feed(frame)
    primary.feed(frame)  # stale
    primary.feed(shadow.seal([Ack(2)]))
    primary.feed(frame)  # stale
    primary.feed(flipped(shadow.seal([Ack(3)]), -1))  # forged
    _, fresh = stream_pair(primary=peering)
    fresh.feed(header(HANDSHAKE_MAX_BODY + 1, kind=OFFER))  # oversized
    assert peering.refused == dict.fromkeys(REASONS, 0) | {"stale": 2, "forged": 1, "oversized": 1}
    assert peering.alarm is None


def test_a_refusal_is_counted_once_per_frame() -> None:
    shadow, primary = connected()
    got = primary.feed(flipped(shadow.seal([Ack(1)]), -1) + shadow.seal([Ack(2)]))
    assert got.refused is not None and got.refused.reason == "forged"
    assert primary.peering.refused["forged"] == 1
    assert sum(primary.peering.refused.values()) == 1


# === datagram channel ==========================================================================


def test_no_beat_can_be_sealed_before_a_session() -> None:
    a, _ = datagram_pair()
    assert a.seal(BEAT) is None


def test_datagram_ends_establish_by_offering_both_ways() -> None:
    a, b = datagram_pair()
    offer_answer(a, b)
    assert b.session is None  # b answered: it waits for a's first beat, or its own Answer
    offer_answer(b, a)
    assert a.session is not None and b.session is not None
    assert a.session.session_id == b.session.session_id
    assert beat(a, b).messages == [BEAT]
    assert beat(b, a).messages == [BEAT]


def test_an_answered_end_adopts_the_session_with_the_offerers_first_beat() -> None:
    a, b = datagram_pair()
    offer_answer(a, b)
    got = beat(a, b)
    assert got.refused is None and got.messages == [BEAT]
    assert b.session is not None and a.session is not None
    assert b.session.session_id == a.session.session_id
    assert beat(b, a).messages == [BEAT]


def test_two_ends_offering_at_once_end_in_the_same_session() -> None:
    a, b = datagram_pair()
    offer_a, offer_b = a.offer(), b.offer()
    answer_b, answer_a = b.receive(offer_a).write, a.receive(offer_b).write
    assert a.receive(answer_b).refused is None and b.receive(answer_a).refused is None
    assert a.session is not None and b.session is not None
    assert a.session.session_id == b.session.session_id
    for _ in range(3):
        assert beat(a, b).messages == [BEAT]
        assert beat(b, a).messages == [BEAT]


def test_a_replayed_beat_after_newer_ones_is_stale() -> None:
    a, b = datagram_pair()
    offer_answer(a, b)
    old = a.seal(BEAT)
    assert old is not None
    assert b.receive(old).messages == [BEAT]
    assert beat(a, b).messages == [BEAT]
    refused_as(b.receive(old), "stale")
    assert beat(a, b).messages == [BEAT]  # a datagram refusal ends nothing


def test_a_datagram_cannot_be_reflected_to_its_sender() -> None:
    a, b = datagram_pair()
    offer_answer(a, b)
    beat(a, b)
    refused_as(beat(a, a), "forged")


def test_an_answer_to_another_offer_is_stale() -> None:
    a, b = datagram_pair()
    answered = b.receive(node("node-a", "node-b", 0xC).offer())  # a's earlier life
    refused_as(a.receive(answered.write), "stale")
    assert a.session is None


def test_an_answer_from_a_new_peer_nonce_while_a_session_is_up_is_unexpected_and_changes_nothing() -> None:
    a, b = datagram_pair()
    captured_offer = a.offer()
    offer_answer(a, b)
    assert a.session is not None
    session_id = a.session.session_id
    reborn = node("node-b", "node-a", 0xD)
    refused_as(a.receive(reborn.receive(captured_offer).write), "unexpected")  # a's old Offer, replayed to b's new life
    assert a.session.session_id == session_id
    assert beat(a, b).messages == [BEAT]


def test_a_datagram_offer_under_another_key_is_a_key_mismatch_until_a_session_clears_it() -> None:
    a, b = datagram_pair()
    refused_as(b.receive(node("node-a", "node-b", 0xC, key=OTHER_KEY).offer()), "key_mismatch")
    assert b.peering.alarm is not None and "key" in b.peering.alarm
    offer_answer(b, a)
    assert b.peering.alarm is None


@pytest.mark.parametrize(
    "offerer",
    [node("intruder", "node-b", 0xC), node("node-a", "node-c", 0xC)],
    ids=["other-sender", "other-recipient"],
)
def test_a_datagram_offer_from_or_to_a_foreign_node_is_refused(offerer: DatagramChannel) -> None:
    b = node("node-b", "node-a", 0xB)
    got = b.receive(offerer.offer())
    refused_as(got, "foreign")
    assert not got.write


def restarted(a: DatagramChannel, b: DatagramChannel, nonce_byte: int = 0xD) -> tuple[DatagramChannel, bytes, bytes]:
    """b restarts with a new nonce and is adopted by a: (new b, an old Offer of b, an old beat of b)."""
    old_offer, old_beat = b.offer(), b.seal(BEAT)
    assert old_beat is not None
    reborn = node("node-b", "node-a", nonce_byte)
    answered = a.receive(reborn.offer())
    assert answered.refused is None and answered.write
    assert reborn.receive(answered.write).refused is None and reborn.session is not None
    got = beat(reborn, a)
    assert got.refused is None and got.messages == [BEAT]
    assert a.session is not None and a.session.peer_nonce == reborn.nonce
    return reborn, old_offer, old_beat


def established_by_peer_offer() -> tuple[DatagramChannel, DatagramChannel]:
    """b offered, a answered, b's first beat made a adopt it: a has no session left on offer."""
    a, b = datagram_pair()
    offer_answer(b, a)
    assert beat(b, a).messages == [BEAT]
    return a, b


def test_a_restarted_peer_is_adopted_after_its_offer_and_first_beat() -> None:
    a, b = established_by_peer_offer()
    reborn, _, _ = restarted(a, b)
    assert beat(a, reborn).messages == [BEAT]
    assert a.peering.refused == dict.fromkeys(REASONS, 0)


def test_a_restarted_peers_offer_alone_does_not_replace_the_session() -> None:
    a, b = established_by_peer_offer()
    assert a.session is not None
    before = a.session.session_id
    a.receive(node("node-b", "node-a", 0xD).offer())
    assert a.session.session_id == before
    assert beat(b, a).messages == [BEAT]


def test_after_a_restart_the_old_lifes_beats_are_out_of_session() -> None:
    a, b = established_by_peer_offer()
    _, _, old_beat = restarted(a, b)
    refused_as(a.receive(old_beat), "out_of_session")
    refused_as(beat(b, a), "out_of_session")


def test_after_a_restart_a_replayed_old_offer_is_stale_and_flips_nothing_back() -> None:
    a, b = established_by_peer_offer()
    reborn, old_offer, old_beat = restarted(a, b)
    got = a.receive(old_offer)
    refused_as(got, "stale")
    assert not got.write
    refused_as(a.receive(old_beat), "out_of_session")
    assert a.session is not None and a.session.peer_nonce == reborn.nonce
    assert beat(reborn, a).messages == [BEAT]


def established_both_ways() -> tuple[DatagramChannel, DatagramChannel]:
    """The usual start: both ends offered while neither had a session."""
    a, b = datagram_pair()
    offer_answer(a, b)
    offer_answer(b, a)
    assert beat(b, a).messages == [BEAT]
    return a, b


def established_then_offer_replayed() -> tuple[DatagramChannel, DatagramChannel]:
    """An attacker replays b's Offer while b's session is up (harmless by itself)."""
    a, b = established_by_peer_offer()
    captured = b.offer()
    assert a.receive(captured).refused is None
    return a, b


@pytest.mark.parametrize("setup", [established_both_ways, established_then_offer_replayed])
def test_after_a_restart_an_old_beat_cannot_flip_the_session_back(
    setup: Callable[[], tuple[DatagramChannel, DatagramChannel]],
) -> None:
    a, b = setup()
    reborn, _, old_beat = restarted(a, b)
    got = a.receive(old_beat)
    assert not got.messages
    assert a.session is not None and a.session.peer_nonce == reborn.nonce
    assert beat(reborn, a).messages == [BEAT]


def test_a_peer_that_restarts_twice_is_followed_each_time() -> None:
    a, b = established_by_peer_offer()
    second, _, _ = restarted(a, b)
    third, _, stale_beat = restarted(a, second, 0xF)
    assert beat(third, a).messages == [BEAT]
    refused_as(a.receive(stale_beat), "out_of_session")


def test_this_nodes_own_restart_is_adopted_by_the_peer() -> None:
    a, b = established_by_peer_offer()
    a2 = node("node-a", "node-b", 0xE)
    offer_answer(a2, b)
    assert beat(a2, b).messages == [BEAT]
    assert b.session is not None and b.session.peer_nonce == a2.nonce
    refused_as(beat(a, b), "out_of_session")


@pytest.mark.parametrize("size", [0, 1, HEADER.size - 1])
def test_a_datagram_shorter_than_a_header_is_malformed(size: int) -> None:
    a, b = datagram_pair()
    offer_answer(a, b)
    frame = a.seal(BEAT)
    assert frame is not None
    refused_as(b.receive(frame[:size]), "malformed")


def test_a_datagram_whose_length_disagrees_with_its_header_is_malformed() -> None:
    a, b = datagram_pair()
    offer_answer(a, b)
    frame = a.seal(BEAT)
    assert frame is not None
    refused_as(b.receive(frame[:-1]), "malformed")
    refused_as(b.receive(frame + b"\0"), "malformed")
    refused_as(b.receive(frame + frame), "malformed")  # one frame per datagram
    assert b.receive(frame).messages == [BEAT]  # none of these consumed its counter


def test_a_sealed_datagram_shorter_than_the_sealing_overhead_is_malformed() -> None:
    _, b = datagram_pair()
    short = SEALED_OVERHEAD - HEADER.size - 1
    refused_as(b.receive(header(short) + b"\0" * short), "malformed")


def test_a_datagram_with_a_bad_magic_or_kind_is_malformed() -> None:
    _, b = datagram_pair()
    refused_as(b.receive(header(0, magic=b"XX")), "malformed")
    refused_as(b.receive(header(0, kind=99)), "malformed")


def test_a_beat_datagram_with_any_byte_flipped_is_refused() -> None:
    for index in range(SEALED_OVERHEAD + len(BEAT_CODEC.encode(BEAT))):
        a, b = datagram_pair()
        offer_answer(a, b)
        frame = a.seal(BEAT)
        assert frame is not None
        got = b.receive(flipped(frame, index))
        assert got.refused is not None and not got.messages, index


def test_a_datagram_frame_over_the_codecs_limit_is_oversized() -> None:
    limit = max(HANDSHAKE_MAX_BODY, BEAT_CODEC.max_body + SEALED_OVERHEAD - HEADER.size)
    _, b = datagram_pair()
    refused_as(b.receive(header(limit + 1) + b"\0" * (limit + 1)), "oversized")
    _, b = datagram_pair()
    refused_as(b.receive(header(limit) + b"\0" * limit), "out_of_session")  # past the size check


# === heartbeat checks =========================================================================


def test_a_good_beat_passes() -> None:
    assert check_beat(Heartbeat("node-b", 0, "shadow", 0), "node-b") is None
    assert check_beat(Heartbeat("node-b", MAX_EPOCH, "primary", 10**9), "node-b") is None


@pytest.mark.parametrize(
    ("beat_", "reason"),
    [
        (Heartbeat("node-c", 1, "primary", 0), "foreign"),
        (Heartbeat("node-b", 1, "king", 0), "undecodable"),
        (Heartbeat("node-b", MAX_EPOCH + 1, "primary", 0), "undecodable"),
        (Heartbeat("node-b", -1, "primary", 0), "undecodable"),
        (Heartbeat("node-b", 1, "primary", -1), "undecodable"),
    ],
    ids=["other-node", "unknown-role", "epoch-too-high", "negative-epoch", "negative-released"],
)
def test_a_bad_beat_is_refused(beat_: Heartbeat, reason: str) -> None:
    refused = check_beat(beat_, "node-b")
    assert refused is not None and refused.reason == reason


# === message codec ==============================================================================


def test_a_codec_encodes_its_kind_byte_then_msgpack() -> None:
    assert small_codec().encode(Note("hi")) == bytes([9]) + msgspec.msgpack.encode(Note("hi"))
    assert small_codec().decode(small_codec().encode(Ping(3))) == Ping(3)


def test_a_body_of_another_kind_than_its_kind_byte_is_refused() -> None:
    plaintext = bytes([7]) + msgspec.msgpack.encode(Note("x"))
    assert small_codec().decode(plaintext) == Refused("undecodable", "kind does not match the body")
    assert CODEC.decode(bytes([CODEC.kinds[Ack]]) + msgspec.msgpack.encode(Hello("s", 1))) == Refused(
        "undecodable", "kind does not match the body"
    )


def test_an_empty_plaintext_is_refused() -> None:
    assert small_codec().decode(b"") == Refused("undecodable", "empty body")


@pytest.mark.parametrize("body", [b"", b"\xc1", msgspec.msgpack.encode(["nope"])], ids=["none", "invalid", "wrong"])
def test_a_body_that_does_not_decode_is_refused_with_the_decoders_reason(body: bytes) -> None:
    refused = small_codec().decode(bytes([7]) + body)
    assert isinstance(refused, Refused) and refused.reason == "undecodable" and refused.detail


def test_a_type_outside_the_union_cannot_be_encoded() -> None:
    with pytest.raises(KeyError):
        small_codec().encode(Ack(1))
    with pytest.raises(KeyError):
        CODEC.encode(BEAT)


def test_a_heartbeat_is_refused_by_the_replication_codec_and_the_reverse() -> None:
    assert BEAT_CODEC.decode(BEAT_CODEC.encode(BEAT)) == BEAT
    assert isinstance(CODEC.decode(BEAT_CODEC.encode(BEAT)), Refused)
    assert isinstance(BEAT_CODEC.decode(CODEC.encode(Ack(1))), Refused)


# === frame reader on its own ================================================================


def frames(reader: FrameReader, data: bytes) -> list[RawFrame]:
    return list(reader.feed(data))


def test_a_partial_header_waits_for_more() -> None:
    frame = Session.between(KEY, "a", nonce(1), "b", nonce(2)).seal(b"\x07\x01")
    reader = FrameReader()
    assert frames(reader, frame[: HEADER.size - 1]) == []
    assert reader.pending_bytes == HEADER.size - 1
    assert frames(reader, frame[HEADER.size - 1 :]) == [RawFrame(SEALED, frame)]
    assert reader.pending_bytes == 0


def test_a_truncated_frame_is_held_not_yielded() -> None:
    frame = Session.between(KEY, "a", nonce(1), "b", nonce(2)).seal(b"\x07\x01")
    reader = FrameReader()
    assert frames(reader, frame[:-1]) == []
    assert reader.pending_bytes == len(frame) - 1  # on connection loss: counted as truncated
    assert read_datagram(frame[:-1], HANDSHAKE_MAX_BODY) == Refused(
        "malformed", f"header says {len(frame)} bytes, datagram has {len(frame) - 1}"
    )


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (header(3, magic=b"XX"), "malformed"),
        (b"GET / HT", "malformed"),
        (header(3, kind=0), "malformed"),
        (header(3, version=1), "version"),
        (header(HANDSHAKE_MAX_BODY + 1), "oversized"),
    ],
    ids=["magic", "http", "kind", "version", "length"],
)
def test_a_bad_header_loses_the_stream_as_soon_as_it_is_in(head: bytes, reason: str) -> None:
    reader = FrameReader()
    assert frames(reader, head[:-1]) == []
    with pytest.raises(StreamLost) as lost:
        frames(reader, head[-1:])
    assert lost.value.refused.reason == reason


def test_a_raised_limit_applies_to_the_next_header() -> None:
    reader = FrameReader(max_body=10)
    with pytest.raises(StreamLost):
        frames(reader, header(11))
    reader = FrameReader(max_body=10)
    reader.max_body = 11
    assert frames(reader, header(11)) == []


def test_a_handshake_claiming_the_receivers_own_id_is_refused_as_reflected_without_an_alarm() -> None:
    """Anyone can send a node its own Offer back: refused, but no alarm (it proves no key)."""
    receiver = Peering(KEY, "primary", None)
    shadow, primary = stream_pair(shadow=Peering(KEY, "primary", "primary"), primary=receiver)
    got = primary.feed(shadow.offer())
    refused_as(got, "reflected")
    assert receiver.alarm is None and receiver.refused["reflected"] == 1
    shadow, _ = stream_pair()
    refused_as(shadow.feed(seal_handshake(Answer("shadow", "shadow", nonce(2), echo=nonce(1)), handshake_key(KEY))),
               "reflected")  # fmt: skip
    b = node("node-b", "node-a", 0xB)
    refused_as(b.receive(node("node-b", "node-b", 0xC).offer()), "reflected")


def test_a_foreign_key_holder_raises_the_alarm_even_while_a_session_is_up() -> None:
    """Only a holder of the key can make a verified Offer: that is misconfiguration to shout
    about, session or not; a datagram without the key (another version) is not, once up."""
    a, b = node("node-a", "node-b", 0xA), node("node-b", "node-a", 0xB)
    b.receive(a.receive(b.offer()).write)
    assert b.session is not None and b.peering.alarm is None
    refused_as(b.receive(node("intruder", "node-b", 0xC).offer()), "foreign")
    assert b.peering.alarm is not None and b.peering.alarm.startswith(ALARMS["foreign"])
    b.peering.alarm = None
    refused_as(b.receive(HEADER.pack(MAGIC, 1, 32, 0)), "version")
    assert b.peering.alarm is None
