"""The inputs of the core. Each carries `now`, so recording the event records the time."""

from dataclasses import dataclass

from sipshadow.core.actions import Address


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """A UDP datagram arrived on the service address from `source` (RFC 3261 §18.2.1).

    `data` is the whole payload, any bytes at all (garbage is counted, never raised);
    `source` is the sender's (IP, port); `now` is seconds on the event clock (the node's
    loop clock, monotonic; on the shadow, the primary's value from the log).
    """

    data: bytes
    source: Address
    now: float


@dataclass(frozen=True, slots=True)
class TimerExpired:
    """The deadline the core last asked for (`Gateway.next_deadline`) has passed.

    `now` as in `DatagramReceived`. An early or spurious one is harmless: only what is due
    by `now` fires.
    """

    now: float


Event = DatagramReceived | TimerExpired
