"""Member health: N probe rounds in a row with no sign of life take a member out.

A sign of life is any response from the member's address: to a probe (even 404), or to
any request we forwarded, since many members (SIPp's stock UAS among them) answer calls but
not OPTIONS. A probe answer counts only for the probe outstanding (the gateway checks that
it came from the member it was sent to). A member out of service gets no new calls; calls it
already holds keep their route.
"""

from __future__ import annotations

from typing import Any


class MemberHealth:
    """Probe bookkeeping for one member: `misses` counts rounds in a row with no sign of life
    (`up` goes False at `misses_allowed`), `outstanding` says this round's probe awaits its
    answer, and `sequence` numbers the rounds (it is in the probe's branch and CSeq)."""

    __slots__ = ("misses", "outstanding", "sequence", "up")

    def __init__(self) -> None:
        self.up = True
        self.misses = 0
        self.outstanding = False
        self.sequence = 0


class HealthMonitor:
    """Decides, at each probe round, who is up; the gateway builds and sends the probes.

    `interval_s` is seconds between rounds on the event clock (0 switches probing off);
    `next_round_at` is the next round's absolute time, or None when probing is off.
    """

    def __init__(self, member_count: int, interval_s: float, misses_allowed: int) -> None:
        self.members = [MemberHealth() for _ in range(member_count)]
        self.interval_s = interval_s
        self.misses_allowed = misses_allowed
        # Due at once (the first timer event); None switches probing off.
        self.next_round_at: float | None = 0.0 if interval_s > 0 and member_count else None
        self._healthy: list[int] | None = None
        self._summary: str | None = None

    def grow(self, member_count: int) -> None:
        """Members appended by a reload: in service until their probes say otherwise."""
        for _ in range(member_count - len(self.members)):
            self.members.append(MemberHealth())
        self._changed()

    def reconfigure(self, interval_s: float, misses_allowed: int, now: float | None) -> None:
        """New probe settings: interval 0 stops probing; probing switched on is due at `now`; a
        running schedule keeps its next round. `now` None: a snapshot's state follows."""
        self.interval_s = interval_s
        self.misses_allowed = misses_allowed
        if interval_s <= 0:
            self.next_round_at = None
        elif self.next_round_at is None and now is not None:
            self.next_round_at = now
        self._changed()

    def _changed(self) -> None:
        self._healthy = self._summary = None

    def healthy(self) -> list[int]:
        """Members in service, in configured order (cached until the next health change)."""
        if self._healthy is None:
            self._healthy = [index for index, member in enumerate(self.members) if member.up]
        return self._healthy

    def summary(self) -> str:
        """The health state as text, for the gateway's state digest (cached likewise)."""
        if self._summary is None:
            self._summary = f"{self.next_round_at!r}:" + ",".join(
                f"{m.up:d}.{m.misses}.{m.outstanding:d}.{m.sequence}" for m in self.members
            )
        return self._summary

    def export_state(self) -> dict[str, Any]:
        """{"next_round_at": float | None, "members": [(up, misses, outstanding, sequence), ...]}."""
        return {
            "next_round_at": self.next_round_at,
            "members": [(m.up, m.misses, m.outstanding, m.sequence) for m in self.members],
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Take an `export_state()`; raises ValueError if it has another number of members."""
        self.next_round_at = state["next_round_at"]
        for member, (up, misses, outstanding, sequence) in zip(self.members, state["members"], strict=True):
            member.up, member.misses, member.outstanding, member.sequence = up, misses, outstanding, sequence
        self._changed()

    def start_round(self, now: float) -> list[int]:
        """Account for last round's unanswered probes; return the members to probe now.

        When a round is due (`now` at or past `next_round_at`): every member index, in order,
        down ones included; otherwise an empty list.
        """
        if self.next_round_at is None or now < self.next_round_at:
            return []
        self._changed()
        self.next_round_at = now + self.interval_s
        for member in self.members:
            if member.outstanding:
                member.misses += 1
                if member.misses >= self.misses_allowed:
                    member.up = False
            member.outstanding = True
            member.sequence += 1
        return list(range(len(self.members)))

    def answered(self, index: int, sequence: int) -> bool | None:
        """A probe response from the member; None if it is not for the probe outstanding.

        Otherwise returns whether the member came back into service.
        """
        member = self.members[index]
        if not member.outstanding or sequence != member.sequence:
            return None
        member.outstanding = False
        self._changed()
        return self._revive(member)

    def alive(self, index: int) -> bool:
        """Any response from the member proves it alive; returns whether it came back."""
        member = self.members[index]
        if member.up and member.misses == 0:
            return False  # nothing changes: keep the cached summary (hot path)
        self._changed()
        return self._revive(member)

    @staticmethod
    def _revive(member: MemberHealth) -> bool:
        came_back = not member.up
        member.up = True
        member.misses = 0
        return came_back
