"""The replication log: one entry per event the primary's core took, in order.

An entry is enough to replay the event exactly: its kind, source, the payload (forward mode)
or the payload's digest (tap mode, the shadow has the bytes from the wire), `now`, the draws
made while handling it, and the digest of the core's state afterwards.
"""

from __future__ import annotations

import hashlib

import msgspec

from sipshadow.core import Event, MemberSpec, MessageReceived, TimerExpired
from sipshadow.core.actions import UDP
from sipshadow.core.events import Control, Reconfigure, SetClock, SetDraining

DATAGRAM = 0
TIMER = 1
#: A TCP connection established (payload: its `replication.streams.ConnectionBase`, msgpack)
#: or closed; `host`, `port` name its peer. The core never sees these: the ledger does.
STREAM_OPENED = 2
STREAM_CLOSED = 3
#: An operator's change to the core (`core.events.Control`: a reload, a drain); payload:
#: `encode_control`. Always carried in the entry, in tap mode too (no wire copy exists).
CONTROL = 4


class LogEntry(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One event the primary's core took, enough to replay it exactly.

    `seq`: 1, 2, 3... with no gap, in the order the core took the events; `kind`: `DATAGRAM` or
    `TIMER`; `now`: the event's time (seconds, the primary's loop clock); `host`, `port`: a
    datagram's source; `payload`: its bytes (forward mode) or None, with `payload_digest`, the
    16-byte BLAKE2b of the bytes (tap mode: the shadow has the bytes from the tap); `draws`: the
    entropy draws the core made, in order (floats in [0, 1)); `state`: `Gateway.state_digest()`
    right after, the shadow's check that it reached the same state; `transport`: UDP or TCP (a
    TCP message's bytes always travel in the entry: a mirror gives segments, not messages);
    `stream_bytes`: for a TCP message, the bytes it took off its connection's stream.
    """

    seq: int
    kind: int
    now: float
    host: str = ""
    port: int = 0
    payload: bytes | None = None
    payload_digest: bytes | None = None
    draws: tuple[float, ...] = ()
    state: int = 0
    transport: str = UDP
    stream_bytes: int = 0


def payload_digest(data: bytes) -> bytes:
    """The 16-byte BLAKE2b digest that pairs a tapped datagram with its log entry."""
    return hashlib.blake2b(data, digest_size=16).digest()


def entry_for(
    seq: int, event: Event, draws: tuple[float, ...], state: int, *, with_payload: bool = True, stream_bytes: int = 0
) -> LogEntry:
    """The log entry of an event the primary just handled."""
    if isinstance(event, (Reconfigure, SetDraining, SetClock)):
        return LogEntry(seq, CONTROL, event.now, payload=encode_control(event), draws=draws, state=state)
    if isinstance(event, MessageReceived):
        host, port = event.source
        transport = event.transport
        if with_payload or transport != UDP:
            return LogEntry(
                seq, DATAGRAM, event.now, host, port, event.data, None, draws, state, transport, stream_bytes
            )
        return LogEntry(seq, DATAGRAM, event.now, host, port, None, payload_digest(event.data), draws, state)
    return LogEntry(seq, TIMER, event.now, draws=draws, state=state)


def event_for(entry: LogEntry, payload: bytes | None = None) -> Event:
    """The event to replay; in tap mode the caller supplies the payload it matched by digest.

    Raises ValueError for a datagram entry with no payload in it and none supplied."""
    if entry.kind == TIMER:
        return TimerExpired(entry.now)
    if entry.kind == CONTROL:
        if entry.payload is None:
            raise ValueError(f"control entry {entry.seq} has no payload")
        return decode_control(entry.payload, entry.now)
    data = entry.payload if entry.payload is not None else payload
    if data is None:
        raise ValueError(f"log entry {entry.seq} has no payload and none was supplied")
    return MessageReceived(data, (entry.host, entry.port), entry.now, entry.transport)


def encode_control(event: Control) -> bytes:
    """msgpack of ["reconfigure", [[host, port, weight, transport], ...], policy, probe_interval_s,
    probe_misses], ["drain", host, port, draining] or ["clock", utc_offset]; `now` travels in the entry."""
    if isinstance(event, Reconfigure):
        members = [[*spec.address, spec.weight, spec.transport] for spec in event.members]
        return msgspec.msgpack.encode(["reconfigure", members, event.policy, event.probe_interval_s,
                                       event.probe_misses])  # fmt: skip
    if isinstance(event, SetClock):
        return msgspec.msgpack.encode(["clock", event.utc_offset])
    return msgspec.msgpack.encode(["drain", *event.member, event.draining])


def decode_control(payload: bytes, now: float) -> Control:
    """The event `encode_control` encoded, at `now`; ValueError for anything else."""
    try:
        fields = msgspec.msgpack.decode(payload)
        if fields[0] == "reconfigure":
            _, members, policy, interval_s, misses = fields
            specs = tuple(MemberSpec((str(host), int(port)), int(weight), str(transport))
                          for host, port, weight, transport in members)  # fmt: skip
            return Reconfigure(specs, str(policy), float(interval_s), int(misses), now)
        if fields[0] == "drain":
            _, host, port, draining = fields
            return SetDraining((str(host), int(port)), bool(draining), now)
        if fields[0] == "clock":
            _, utc_offset = fields
            return SetClock(float(utc_offset), now)
    except (msgspec.DecodeError, TypeError, ValueError, IndexError, KeyError) as error:
        raise ValueError(f"not a control entry: {error}") from None
    raise ValueError(f"not a control entry: {fields[0]!r}")
