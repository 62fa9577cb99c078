"""The inputs of the core. Each carries `now`, so recording the event records the time."""

from dataclasses import dataclass

from sipshadow.core.actions import UDP, Address


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A SIP message arrived on the service address from `source` (RFC 3261 §18.2.1).

    `data` is one UDP datagram's payload, or one message framed off a TCP connection
    (`sip.stream`): any bytes at all (garbage is counted, never raised); `source` is the
    sender's (IP, port), for TCP the connection's peer, which names the connection while it
    lives; `now` is seconds on the event clock (the node's loop clock, monotonic; on the
    shadow, the primary's value from the log); `transport` is `UDP` or `TCP`.
    """

    data: bytes
    source: Address
    now: float
    transport: str = UDP


@dataclass(frozen=True, slots=True)
class TimerExpired:
    """The deadline the core last asked for (`Gateway.next_deadline`) has passed.

    `now` as in `MessageReceived`. An early or spurious one is harmless: only what is due
    by `now` fires.
    """

    now: float


Event = MessageReceived | TimerExpired
