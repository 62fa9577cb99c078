"""The cluster as the core routes to it: every member ever configured, and which may take new calls.

Dialogs name their member by index, so a member keeps its index for the life of the process:
a reload (`Reconfigure`) keeps the index of every member it still lists (its weight and
transport may change), appends the new ones, and *retires* the ones it no longer lists
instead of removing them. A retired or draining member gets no new call; the calls it holds
finish where they are (an operator's maintenance window, RFC 3261 §16.6 keeps a dialog's
route). A member listed again is un-retired at its old index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sipshadow.core.actions import Address
from sipshadow.core.config import MemberSpec


class Membership:
    """`specs[i]` is member `i`; `draining[i]` and `retired[i]` keep it from new calls."""

    def __init__(self, specs: Sequence[MemberSpec]) -> None:
        self.specs: list[MemberSpec] = list(specs)
        self.draining = [False] * len(self.specs)
        self.retired = [False] * len(self.specs)
        self._eligible: list[int] | None = None
        self._summary: str | None = None

    def __len__(self) -> int:
        return len(self.specs)

    def index_of(self, address: Address) -> int | None:
        """The index of the member at `address` (retired ones included), or None."""
        for index, spec in enumerate(self.specs):
            if spec.address == address:
                return index
        return None

    def eligible(self) -> list[int]:
        """Members that may take a new call (neither draining nor retired), in index order."""
        if self._eligible is None:
            self._eligible = [i for i in range(len(self.specs)) if not (self.draining[i] or self.retired[i])]
        return self._eligible

    @property
    def all_eligible(self) -> bool:
        """True while no member is held back: the hot path then skips filtering."""
        return len(self.eligible()) == len(self.specs)

    def set_draining(self, index: int, draining: bool) -> bool:
        """Drain (True) or undrain member `index`; returns whether anything changed."""
        if self.draining[index] == draining:
            return False
        self.draining[index] = draining
        self._changed()
        return True

    def reconcile(self, specs: Sequence[MemberSpec]) -> int:
        """Take a reloaded member list; returns how many members were appended (new indexes).

        Members are matched by address: a listed one keeps its index, takes the new weight and
        transport and is un-retired; an unlisted one is retired; a new one is appended. A
        draining member stays draining across reloads."""
        listed = set()
        added = 0
        for spec in specs:
            index = self.index_of(spec.address)
            if index is None:
                self.specs.append(spec)
                self.draining.append(False)
                self.retired.append(False)
                index = len(self.specs) - 1
                added += 1
            else:
                self.specs[index] = spec
                self.retired[index] = False
            listed.add(index)
        for index in range(len(self.specs)):
            if index not in listed:
                self.retired[index] = True
        self._changed()
        return added

    def summary(self) -> str:
        """The membership as text, for the gateway's state digest (cached until it changes)."""
        if self._summary is None:
            self._summary = ",".join(
                f"{spec.address[0]}:{spec.address[1]}/{spec.weight}/{spec.transport}/"
                f"{self.draining[i]:d}{self.retired[i]:d}"
                for i, spec in enumerate(self.specs)
            )
        return self._summary

    def export_state(self) -> list[tuple[str, int, int, str, bool, bool]]:
        """[(host, port, weight, transport, draining, retired), ...] in index order."""
        return [
            (spec.address[0], spec.address[1], spec.weight, spec.transport, self.draining[i], self.retired[i])
            for i, spec in enumerate(self.specs)
        ]

    def import_state(self, rows: list[Any]) -> None:
        """Replace the membership with an `export_state()`; TypeError or ValueError on a misfit."""
        self.specs = [MemberSpec((str(host), int(port)), int(weight), str(transport))
                      for host, port, weight, transport, _, _ in rows]  # fmt: skip
        self.draining = [bool(row[4]) for row in rows]
        self.retired = [bool(row[5]) for row in rows]
        self._changed()

    def _changed(self) -> None:
        self._eligible = self._summary = None
