"""The inputs of the core. Each carries `now`, so recording the event records the time."""

from dataclasses import dataclass

from sipshadow.core.actions import Address


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """A UDP datagram arrived on the service address from `source` (RFC 3261 §18.2.1)."""

    data: bytes
    source: Address
    now: float


@dataclass(frozen=True, slots=True)
class TimerExpired:
    """The deadline the core last asked for (`Gateway.next_deadline`) has passed."""

    now: float


Event = DatagramReceived | TimerExpired
