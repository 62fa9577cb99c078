"""Tap mode's pairing: datagrams copied off the wire, matched to the primary's log by digest.

The shadow gets every datagram sent to the primary from the switch's mirror, in tap order;
the primary's log says, in its own order, which datagrams it took (by digest). The shadow
replays in log order, taking each payload from the tap, and keeps the copies the log never
claimed: at takeover those are exactly the messages that reached the dead primary after its
last logged event (the detection window), to be processed in arrival order.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from sipshadow.core.actions import Address
from sipshadow.replication.log import payload_digest


class TapBuffer:
    """Tapped datagrams not yet claimed by a log entry, oldest first."""

    def __init__(self, horizon_s: float = 2.0, max_datagrams: int = 100_000) -> None:
        self.horizon_s = horizon_s
        self.max_datagrams = max_datagrams
        self.received = 0
        self.matched = 0
        self.pruned = 0
        self._arrivals: OrderedDict[int, tuple[float, bytes, bytes, Address]] = OrderedDict()
        self._by_digest: dict[bytes, deque[int]] = {}
        self._next = 0
        #: Entries applied with a payload the primary sent (their copy was late): when the copy
        #: comes after all, it is that entry's, not a message the log never took. By (digest,
        #: source), with when it was applied.
        self._owed: OrderedDict[int, tuple[float, bytes, Address]] = OrderedDict()
        self._owed_next = 0
        self.late = 0

    def __len__(self) -> int:
        return len(self._arrivals)

    def add(self, data: bytes, source: Address, now: float) -> None:
        """A copy arrived from the tap (one an entry already took by request is dropped)."""
        digest = payload_digest(data)
        for number, (_, owed_digest, owed_source) in self._owed.items():
            if owed_digest == digest and owed_source == source:
                del self._owed[number]
                self.late += 1
                return
        number = self._next
        self._next += 1
        self.received += 1
        self._arrivals[number] = (now, digest, data, source)
        self._by_digest.setdefault(digest, deque()).append(number)
        if len(self._arrivals) > self.max_datagrams:
            self._forget(next(iter(self._arrivals)))
            self.pruned += 1

    def has(self, digest: bytes, source: Address) -> bool:
        numbers = self._by_digest.get(digest, ())
        return any(self._arrivals[number][3] == source for number in numbers)

    def taken_without_copy(self, digest: bytes, source: Address, now: float) -> None:
        """An entry was applied with the payload the primary sent, its copy not yet here: if
        the copy comes within the horizon it is dropped on arrival (`add`), never taken at a
        takeover for a message the log did not carry."""
        self._owed[self._owed_next] = (now, digest, source)
        self._owed_next += 1
        while self._owed and (next(iter(self._owed.values()))[0] < now - self.horizon_s or len(self._owed) > 4096):
            self._owed.popitem(last=False)

    def claim(self, digest: bytes, source: Address) -> bytes | None:
        """The payload of the oldest unclaimed copy with this digest from this source, if any."""
        numbers = self._by_digest.get(digest)
        if not numbers:
            return None
        for number in numbers:
            _, _, data, arrived_from = self._arrivals[number]
            if arrived_from == source:
                self._forget(number)
                self.matched += 1
                return data
        return None

    def prune(self, now: float) -> None:
        """Drop copies older than the horizon: the primary never took them (it lost them)."""
        while self._arrivals:
            number, (arrived_at, *_) = next(iter(self._arrivals.items()))
            if now - arrived_at <= self.horizon_s:
                return
            self._forget(number)
            self.pruned += 1

    def unclaimed(self) -> list[tuple[bytes, Address]]:
        """Every copy no log entry claimed, in arrival order (for the new primary to process)."""
        return [(data, source) for _, _, data, source in self._arrivals.values()]

    def clear(self) -> None:
        self._arrivals.clear()
        self._by_digest.clear()
        self._owed.clear()

    def _forget(self, number: int) -> None:
        _, digest, _, _ = self._arrivals.pop(number)
        numbers = self._by_digest[digest]
        numbers.remove(number)
        if not numbers:
            del self._by_digest[digest]
