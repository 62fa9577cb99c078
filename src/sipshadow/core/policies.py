"""Dispatch policies: which healthy member takes a new call.

A policy sees the candidates (healthy member indexes, in configured order) and may keep state
of its own (the round-robin cursor), which is part of the core's replicated state. Every draw
comes from the injected `Entropy`; hashing uses CRC-32, never Python's salted `hash()`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol

from sipshadow.core.config import POLICIES, MemberSpec
from sipshadow.core.entropy import Entropy


class Policy(Protocol):
    """Picks the member for the first dialog-creating request of a Call-ID the table does not hold.

    Out-of-dialog requests of an unknown Call-ID (MESSAGE, REGISTER…) go by `stable_hash` instead.
    """

    #: The policy's own replicated state (the round-robin cursor; 0 for stateless policies).
    cursor: int

    def choose(self, candidates: Sequence[int], call_id: str, active: Sequence[int]) -> int:
        """Return one of `candidates`, the member that takes the new Call-ID `call_id`.

        `candidates`: member indexes in configured order, never empty (the healthy members,
        or all of them when none is). `active`: active calls per member index, every member
        (`DialogTable.active_per_member`). A choice may move `cursor` and may draw from the
        `Entropy` the policy was built with (weighted-random draws exactly once per choice;
        the others never draw), and depends on nothing else, so a shadow replaying the same
        draws chooses the same. Never raises; a draw may raise `ReplayMismatch` through it.
        """


class RoundRobin:
    """Members in turn, skipping the unhealthy: spread within one call per member.

    `cursor` is the member index tried next.
    """

    def __init__(self, member_count: int) -> None:
        self.member_count = member_count
        self.cursor = 0

    def choose(self, candidates: Sequence[int], call_id: str, active: Sequence[int]) -> int:
        allowed = set(candidates)
        for _ in range(self.member_count):
            member = self.cursor
            self.cursor = (self.cursor + 1) % self.member_count
            if member in allowed:
                return member
        return candidates[0]


class LeastActiveCalls:
    """The member with the fewest active calls; ties go to the first configured."""

    cursor = 0

    def choose(self, candidates: Sequence[int], call_id: str, active: Sequence[int]) -> int:
        return min(candidates, key=lambda member: active[member])


class WeightedRandom:
    """A draw proportional to the candidates' weights: one draw per choice, logged for the shadow."""

    cursor = 0

    def __init__(self, members: Sequence[MemberSpec], entropy: Entropy) -> None:
        self.weights = [member.weight for member in members]
        self.entropy = entropy

    def choose(self, candidates: Sequence[int], call_id: str, active: Sequence[int]) -> int:
        total = sum(self.weights[member] for member in candidates)
        point = self.entropy.random() * total
        for member in candidates:
            point -= self.weights[member]
            if point < 0:
                return member
        return candidates[-1]


def stable_hash(text: str) -> int:
    """A salt-free hash (Python's `hash()` differs per process, so replicas would disagree).

    CRC-32 of the Latin-1 text (other characters become `?`): an int in [0, 2**32).
    """
    return zlib.crc32(text.encode("latin-1", "replace"))


class CallIdHash:
    """The same Call-ID always lands on the same member while the healthy set is unchanged."""

    cursor = 0

    def choose(self, candidates: Sequence[int], call_id: str, active: Sequence[int]) -> int:
        return candidates[stable_hash(call_id) % len(candidates)]


def make_policy(name: str, members: Sequence[MemberSpec], entropy: Entropy) -> Policy:
    """The policy called `name` (one of `POLICIES`); raises `ValueError` for any other name."""
    if name == "round-robin":
        return RoundRobin(len(members))
    if name == "least-active-calls":
        return LeastActiveCalls()
    if name == "weighted-random":
        return WeightedRandom(members, entropy)
    if name == "call-id-hash":
        return CallIdHash()
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
