"""The dialog table: which member holds each call, its dialogs and transactions, and expiry.

A dialog is Call-ID + From tag + To tag (RFC 3261 §12), and one Call-ID can carry several:
a member that forks answers with several To tags, an upstream proxy forks one INVITE into
branches with the same Call-ID (§13.2.2.4, §16.7). So the table holds a `Call` per Call-ID:
the member every message of that Call-ID goes to, the pending dialog-creating transactions
(`Attempt`, keyed by our branch, which every response carries back), and the dialogs of the
Call-ID keyed by (caller tag, callee tag). Routing for a Call-ID lives while any of its
attempts or dialogs lives.

A call counts as active on its member while it has a pending INVITE or a dialog that is not
terminated and that the ALG is on the path of (its 2xx carried our Record-Route, or a request
of it has come through us since). Subscriptions (SUBSCRIBE, REFER) are routed the same way
but are not calls.

Expiry uses one heap with lazy deletion, one live entry per call at its earliest deadline:
a deadline may move later without touching the heap (the stale entry re-queues itself when
it surfaces), so memory stays O(calls). The table keeps an order-independent digest of its
contents (XOR of a keyed hash of every call), updated on each change, so replicas compare
states after every event in O(1). Every `expires_at` is absolute, in seconds on the event
clock; "lingering" below means it expires by now + `terminated_linger_s` (64*T1), routing
retransmissions and ACKs until then.

Transitions, as `Gateway` drives them (state on event → new state; anything unlisted changes
nothing). An in-dialog request matches a dialog by its tags in either direction, else it gets
481 (§12.2.2); a CANCEL changes nothing itself (§9, §16.10): the 487 that follows does.

Call, one per Call-ID
  none on INVITE/SUBSCRIBE/REFER with no To tag → open: member by the policy, + Attempt
  open on INVITE/SUBSCRIBE/REFER with no To tag → open, same member, + Attempt (none for a
      retransmission of a pending one)
  open on expiry leaving no attempt and no dialog → removed (the Call-ID is new again)
Attempt, keyed by our branch (Timer C: §16.6 item 11, §16.7 item 2)
  pending on 100 → pending
  pending on 101-199 → pending, Timer C restarted; an INVITE's with a To tag: + EARLY dialog
  pending on 2xx → ended; with a To tag: + CONFIRMED dialog; its other EARLY dialogs leave
      the path and linger, waiting for a 2xx of their own (§13.2.2.4)
  pending on 300-699 → ended; with a To tag: + TERMINATED dialog, lingering for the ACK
      (§17.1.1.3); its EARLY dialogs → TERMINATED, lingering
  pending on Timer C (`early_timeout_s`) → ended
Dialog, keyed by (caller tag, callee tag) (§12; subscriptions: RFC 6665 §4.4.1)
  none on an attempt's 1xx, 2xx or 300-699, as above → EARLY, CONFIRMED or TERMINATED
  none on 2xx with a new To tag and a caller's From tag, its attempt ended (late fork)
      → CONFIRMED (§13.2.2.4)
  none on NOTIFY before its SUBSCRIBE's or REFER's 2xx → CONFIRMED (RFC 6665 §4.1.2.4)
  EARLY on 1xx → EARLY, expiry never earlier
  EARLY on 2xx → CONFIRMED
  EARLY on 300-699 → TERMINATED, lingering
  EARLY on BYE → TERMINATED, lingering (§15)
  EARLY on other in-dialog request → EARLY, back on path
  CONFIRMED on 1xx or 300-699 → CONFIRMED, unchanged
  CONFIRMED on 2xx (a retransmission, a re-INVITE's) → CONFIRMED, expiry never earlier
  CONFIRMED on a call's BYE, or a subscription's NOTIFY with Subscription-State: terminated
      → TERMINATED, lingering (§15; RFC 6665 §4.4.1)
  CONFIRMED on other in-dialog request → CONFIRMED, on path, expires now + `confirmed_timeout_s`
  TERMINATED on anything → TERMINATED (never reopened, still routed)
  any on expiry → removed
An EARLY dialog expires `early_timeout_s` after its last 1xx; a CONFIRMED one
`confirmed_timeout_s` after its 2xx or its last request, or lingers off path when its 2xx lost
our Record-Route (its requests then bypass the ALG). Each call that loses a CONFIRMED dialog
to expiry counts in `dialogs_reaped_confirmed`, else one losing an attempt or an EARLY dialog
in `dialogs_reaped_early`.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from enum import IntEnum
from typing import Any, Final

import msgspec

from sipshadow.core.actions import UDP, Address

#: What a call record needs beyond the routing state, kept from the INVITE to the call's end
#: (`core.records`): (From URI, To URI, INVITE time in UTC s, INVITE CSeq, answer time in UTC
#: s or None). A tuple: immutable, so an attempt hands it to its dialog as is, and it hashes
#: into the digest alike on every replica.
Draft = tuple[str, str, float, int, float | None]


class DialogState(IntEnum):
    """RFC 3261 §12: early until a 2xx, confirmed until BYE, then terminated (kept to linger).

    The values are what `Dialog.as_row` carries; the transitions are in the module docstring.
    """

    EARLY = 0
    CONFIRMED = 1
    TERMINATED = 2


class Attempt:
    """A dialog-creating request (INVITE, SUBSCRIBE, REFER) with no final response yet.

    Keyed by the branch the ALG gave it; `expires_at` is Timer C (§16.6 item 11), which
    provisional responses push back (§16.7 item 2).
    """

    __slots__ = ("branch", "cseq", "draft", "expires_at", "from_tag", "method", "source", "transport")

    def __init__(
        self, branch: str, method: str, from_tag: str, cseq: int, source: Address, expires_at: float,
        transport: str = UDP, draft: Draft | None = None,
    ) -> None:  # fmt: skip
        self.branch = branch
        self.method = method
        self.from_tag = from_tag
        self.cseq = cseq
        self.source = source
        self.expires_at = expires_at
        #: How the request came (UDP or TCP): requests towards its caller go back that way.
        self.transport = transport
        #: An INVITE's call record in the making, when records are on (else None).
        self.draft = draft

    def as_row(self) -> tuple[Any, ...]:
        """(branch, method, from_tag, cseq, source host, source port, expires_at, transport, draft)."""
        return (
            self.branch, self.method, self.from_tag, self.cseq, self.source[0], self.source[1], self.expires_at,
            self.transport, self.draft,
        )  # fmt: skip


class Dialog:
    """One dialog of a call: its tags, state, where its caller is, and its own expiry.

    `usage` is the method that created it (INVITE for a call; SUBSCRIBE or REFER for a
    subscription); `branch` names the attempt that created it (its early dialogs end with
    that attempt's non-2xx final); `on_path` says whether the ALG is on its route.
    """

    __slots__ = ("branch", "callee_tag", "caller", "caller_tag", "draft", "expires_at", "on_path", "state", "transport",
                 "usage")  # fmt: skip

    def __init__(
        self,
        caller_tag: str,
        callee_tag: str,
        state: DialogState,
        caller: Address,
        branch: str,
        usage: str,
        expires_at: float,
        *,
        on_path: bool = True,
        transport: str = UDP,
        draft: Draft | None = None,
    ) -> None:
        self.caller_tag = caller_tag
        self.callee_tag = callee_tag
        self.state = state
        self.caller = caller
        self.branch = branch
        self.usage = usage
        self.expires_at = expires_at
        self.on_path = on_path
        #: The caller's transport (UDP or TCP): the callee's requests reach it that way.
        self.transport = transport
        #: An answered call's record in the making (its answer time set), until the call ends.
        self.draft = draft

    @property
    def live(self) -> bool:
        """Holds its member: not ended, and the ALG is on its path."""
        return self.state is not DialogState.TERMINATED and self.on_path

    def as_row(self) -> tuple[Any, ...]:
        """(caller_tag, callee_tag, state value, caller host, caller port, branch, usage, expires_at, on_path,
        transport, draft)."""
        return (
            self.caller_tag, self.callee_tag, self.state.value, self.caller[0], self.caller[1], self.branch,
            self.usage, self.expires_at, self.on_path, self.transport, self.draft,
        )  # fmt: skip


DialogKey = tuple[str, str]
#: Calls changed since the digest was last read, at most (then their hashes are taken).
_DIRTY_LIMIT = 4096
#: "No deadline". A constant: compiled, `float("inf")` would parse its string at every call.
_NEVER: Final = math.inf
_pack = msgspec.msgpack.Encoder().encode


class Call:
    """The routing state of one Call-ID (slotted and small: the table holds tens of thousands)."""

    __slots__ = ("active", "attempts", "call_id", "caller", "counted", "dialogs", "hash", "heap_at", "member",
                 "transport")  # fmt: skip

    def __init__(self, call_id: str, member: int, caller: Address, counted: bool, transport: str = UDP) -> None:
        self.call_id = call_id
        self.member = member
        self.caller = caller
        self.transport = transport
        #: An INVITE opened it: it counts in the member's active calls while live.
        self.counted = counted
        self.attempts: dict[str, Attempt] = {}
        self.dialogs: dict[DialogKey, Dialog] = {}
        self.active = False
        self.hash = 0
        self.heap_at = _NEVER

    @property
    def live(self) -> bool:
        """Holds its member: an attempt pending, or a live dialog."""
        if self.attempts:
            return True
        for dialog in self.dialogs.values():  # noqa: SIM110 -- a loop, not any(): compiled, no generator per call
            if dialog.live:
                return True
        return False

    def deadline(self) -> float:
        """The earliest expiry of its attempts and dialogs (infinity if it has none)."""
        deadline = _NEVER
        for part in self.attempts.values():
            deadline = min(deadline, part.expires_at)
        for dialog in self.dialogs.values():
            deadline = min(deadline, dialog.expires_at)
        return deadline

    def find(self, from_tag: str | None, to_tag: str | None) -> tuple[Dialog | None, bool]:
        """The dialog a request with these tags belongs to, and whether it comes from the caller."""
        if from_tag is None or to_tag is None:
            return None, False
        dialog = self.dialogs.get((from_tag, to_tag))
        if dialog is not None:
            return dialog, True
        return self.dialogs.get((to_tag, from_tag)), False

    def as_row(self) -> tuple[Any, ...]:
        """(call_id, member index, caller host, caller port, counted, heap_at, [Attempt rows],
        [Dialog rows], caller transport, hash): one row of a snapshot (`TableExport.take`)."""
        return (
            self.call_id, self.member, self.caller[0], self.caller[1], self.counted, self.heap_at,
            [attempt.as_row() for attempt in self.attempts.values()],
            [dialog.as_row() for dialog in self.dialogs.values()], self.transport, self.hash,
        )  # fmt: skip


def call_hash(call: Call) -> int:
    """A 64-bit hash of a call's routing state; stable across processes (no `hash()` salt).

    The fields go through msgpack (exact floats, no text formatting: an f-string of them
    cost twice as much, and the primary takes this hash after nearly every event)."""
    attempts = [
        (a.branch, a.method, a.from_tag, a.cseq, a.source, a.expires_at, a.transport, a.draft)
        for a in call.attempts.values()
    ]
    dialogs = [
        (d.caller_tag, d.callee_tag, int(d.state), d.caller, d.branch, d.usage, d.expires_at, d.on_path, d.transport,
         d.draft)
        for d in call.dialogs.values()
    ]  # fmt: skip
    return stable_hash64((call.call_id, call.member, call.caller, call.counted, call.transport, attempts, dialogs))


def stable_hash64(fields: tuple[Any, ...]) -> int:
    """A 64-bit BLAKE2b of `fields` (str, int, float, bool, None and tuples and lists of them)
    as msgpack; the same in every process and build. Never raises: text msgpack cannot take
    (a lone surrogate) is hashed through its repr instead."""
    try:
        data = _pack(fields)
    except (UnicodeEncodeError, OverflowError, TypeError):
        data = repr(fields).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class TableExport:
    """The table as it stood at `DialogTable.begin_export`, handed out a chunk of rows at a time.

    A joining shadow needs one consistent cut of the table, but building every row at once
    stalls the primary's loop (37 000 calls: 300 ms on a loaded host). So the rows leave over
    several loop turns while the table keeps changing, copy-on-write by call: the table hands
    a call here (`preserve`) before it first changes it, and that call's row is taken then, as
    it stood at the cut. Calls opened after the cut are not in it (the log carries them).
    """

    __slots__ = ("_next", "_order", "_preserved", "_unsent", "total")

    def __init__(self, calls: dict[str, Call]) -> None:
        self._unsent = dict(calls)
        self._order = list(self._unsent.values())  # rows leave in table order, but for the preserved
        self._next = 0
        self._preserved: list[tuple[Any, ...]] = []
        #: Rows in the cut: exactly this many leave through `take`.
        self.total = len(self._unsent)

    @property
    def done(self) -> bool:
        return not self._unsent and not self._preserved

    def preserve(self, call: Call) -> None:
        """`call` is about to change: keep its row as of the cut, if it is in the cut and unsent."""
        if self._unsent.get(call.call_id) is call:
            del self._unsent[call.call_id]
            self._preserved.append(call.as_row())

    def take(self, count: int) -> list[tuple[Any, ...]]:
        """Up to `count` rows not yet taken (`Call.as_row()` tuples): those preserved first, then
        the others in table order."""
        rows, self._preserved = self._preserved[:count], self._preserved[count:]
        unsent, order = self._unsent, self._order
        while len(rows) < count and unsent:
            call = order[self._next]
            self._next += 1
            if unsent.get(call.call_id) is call:
                del unsent[call.call_id]
                rows.append(call.as_row())
        return rows


class DialogTable:
    """Calls by Call-ID, active calls per member, and their expiry timers.

    Every change goes through a method here, which keeps the digest, the active counts and
    the heap true; callers never assign to a call's parts themselves. `active_per_member[i]`
    is the number of INVITE-opened calls live on member `i`. Nothing here raises but
    `import_state`.
    """

    def __init__(self, member_count: int) -> None:
        self.calls: dict[str, Call] = {}
        self.active_per_member = [0] * member_count
        self._digest = 0
        self._expiry: list[tuple[float, str]] = []
        #: Calls changed since their hash was last taken: one event may change a call several
        #: times (a 2xx confirms a dialog and ends an attempt), so each is hashed once, on read.
        self._dirty: dict[str, Call] = {}
        #: A cut being exported (`begin_export`): told of each call before it changes.
        self._export: TableExport | None = None

    @property
    def digest(self) -> int:
        """The XOR of every call's hash: equal on replicas that hold the same calls."""
        if self._dirty:
            self.settle()
        return self._digest

    def settle(self) -> None:
        """Bring the changed calls' hashes (and so the digest) up to date."""
        for call in self._dirty.values():
            if self.calls.get(call.call_id) is call:
                self._digest ^= call.hash
                call.hash = call_hash(call)
                self._digest ^= call.hash
        self._dirty.clear()

    def __len__(self) -> int:
        return len(self.calls)

    def get(self, call_id: str) -> Call | None:
        """The call of `call_id`, or None (read only: change it through the methods below)."""
        return self.calls.get(call_id)

    # -- changes --------------------------------------------------------------------------

    def open(self, call_id: str, member: int, caller: Address, *, counted: bool, transport: str = UDP) -> Call:
        """A new Call-ID; it holds nothing until an attempt is added (same event)."""
        call = Call(call_id, member, caller, counted, transport)
        self.calls[call_id] = call
        return call

    def add_attempt(self, call: Call, attempt: Attempt) -> None:
        """A dialog-creating request forwarded; a retransmission (same branch) changes nothing."""
        if attempt.branch in call.attempts:
            return
        if self._export is not None:
            self._export.preserve(call)
        call.attempts[attempt.branch] = attempt
        self._changed(call)

    def refresh_attempt(self, call: Call, attempt: Attempt, expires_at: float) -> None:
        """A 101-199 arrived: Timer C starts again (§16.7 item 2)."""
        if attempt.expires_at != expires_at:
            if self._export is not None:
                self._export.preserve(call)
            attempt.expires_at = expires_at
            self._changed(call)

    def end_attempt(self, call: Call, branch: str, *, failed: bool, linger_until: float) -> None:
        """A final response for the attempt, and what it means for the early dialogs it made.

        A non-2xx ends them. After a 2xx they stop holding the member and wait until
        `linger_until` (64*T1) for a 2xx of their own, which a forking UAS may still send
        (§13.2.2.4).
        """
        if branch not in call.attempts:
            return
        if self._export is not None:
            self._export.preserve(call)
        call.attempts.pop(branch)
        for dialog in call.dialogs.values():
            if dialog.branch == branch and dialog.state is DialogState.EARLY:
                dialog.expires_at = min(dialog.expires_at, linger_until)
                if failed:
                    dialog.state = DialogState.TERMINATED
                else:
                    dialog.on_path = False
        self._changed(call)

    def put_dialog(self, call: Call, dialog: Dialog) -> None:
        """Add a dialog, or bring an existing one (same tags) to `dialog`'s state and expiry.

        A dialog that ended never comes back (a 2xx retransmitted after the BYE).
        """
        if self._export is not None:
            self._export.preserve(call)  # at most once per call: cheaper than knowing whether it changes
        key = (dialog.caller_tag, dialog.callee_tag)
        known = call.dialogs.get(key)
        if known is None:
            call.dialogs[key] = dialog
        elif known.state is DialogState.TERMINATED:
            return
        elif known.state is DialogState.CONFIRMED and dialog.state is not DialogState.CONFIRMED:
            return  # a late 1xx never reopens, a non-2xx never ends a confirmed dialog
        elif dialog.state is known.state:
            known.expires_at = max(known.expires_at, dialog.expires_at)  # a retransmission
            if dialog.state is DialogState.CONFIRMED:
                known.on_path = known.on_path or dialog.on_path
        else:
            known.state = dialog.state
            known.expires_at = dialog.expires_at
            # Confirming: the 2xx's Record-Route fixes the route set (§12.1.2), whatever the 1xx said.
            confirming = dialog.state is DialogState.CONFIRMED
            known.on_path = dialog.on_path if confirming else known.on_path or dialog.on_path
            if confirming:
                known.draft = dialog.draft  # the first 2xx answers the call
        self._changed(call)

    def touch(self, call: Call, dialog: Dialog, expires_at: float | None) -> None:
        """A request of the dialog passed through us: on its path, idle timer restarted."""
        if dialog.on_path and (expires_at is None or dialog.expires_at == expires_at):
            return
        if self._export is not None:
            self._export.preserve(call)
        dialog.on_path = True
        if expires_at is not None:
            dialog.expires_at = expires_at
        self._changed(call)

    def terminate(self, call: Call, dialog: Dialog, linger_until: float) -> None:
        """BYE (or a final NOTIFY): the dialog ends and lingers for retransmissions; its call
        record, if any, has been made (its draft goes)."""
        if dialog.state is DialogState.TERMINATED and dialog.expires_at <= linger_until:
            return
        if self._export is not None:
            self._export.preserve(call)
        dialog.state = DialogState.TERMINATED
        dialog.expires_at = linger_until
        dialog.draft = None
        self._changed(call)

    def _changed(self, call: Call) -> None:
        self._dirty[call.call_id] = call
        if len(self._dirty) > _DIRTY_LIMIT:
            self.settle()  # a solo node never reads the digest: keep the backlog bounded
        self._count(call)
        deadline = call.deadline()
        if deadline < call.heap_at:
            call.heap_at = deadline
            heapq.heappush(self._expiry, (deadline, call.call_id))

    def _count(self, call: Call) -> None:
        live = call.live
        if live != call.active:
            call.active = live
            if call.counted:
                self.active_per_member[call.member] += 1 if live else -1

    # -- expiry ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest queued expiry (possibly stale, so early, never late), or None if none."""
        return self._expiry[0][0] if self._expiry else None

    def expire(self, now: float) -> list[tuple[Call, list[Attempt | Dialog]]]:
        """Remove what has expired; returns each touched call with the parts it lost.

        A call with no part left is removed from the table.
        """
        reaped: list[tuple[Call, list[Attempt | Dialog]]] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            at, call_id = heapq.heappop(heap)
            call = self.calls.get(call_id)
            if call is None or call.heap_at != at:
                continue
            if self._export is not None:
                self._export.preserve(call)
            call.heap_at = _NEVER
            lost: list[Attempt | Dialog] = [part for part in call.attempts.values() if part.expires_at <= now]
            lost.extend(dialog for dialog in call.dialogs.values() if dialog.expires_at <= now)
            if not lost:
                self._requeue(call)
                continue
            call.attempts = {key: part for key, part in call.attempts.items() if part.expires_at > now}
            call.dialogs = {key: part for key, part in call.dialogs.items() if part.expires_at > now}
            if call.attempts or call.dialogs:
                self._changed(call)
            else:
                del self.calls[call_id]
                self._dirty.pop(call_id, None)
                self._digest ^= call.hash  # the hash it entered the digest with, even if stale
                if call.active and call.counted:
                    self.active_per_member[call.member] -= 1
                call.active = False
            reaped.append((call, lost))
        return reaped

    def _requeue(self, call: Call) -> None:
        deadline = call.deadline()
        call.heap_at = deadline
        heapq.heappush(self._expiry, (deadline, call.call_id))

    # -- state transfer -------------------------------------------------------------------

    def begin_export(self) -> TableExport:
        """A cut of the table as it stands now, whose rows the caller takes over time while the
        table keeps changing (`TableExport`); `end_export` when every row is taken or the cut is
        abandoned. Hashes are settled first: each row carries its call's hash at the cut."""
        self.settle()
        self._export = TableExport(self.calls)
        return self._export

    def end_export(self) -> None:
        """No cut is exported any more: changes stop preserving rows."""
        self._export = None

    def import_state(self, rows: list[Any], digest: int | None = None) -> None:
        """Replace the contents with a snapshot's rows (`Call.as_row()`); counts and heap follow.

        Each row carries its call's hash, so a large table is not hashed again here (that
        would stall the joining shadow): the rows must add up to the sender's `digest`, and
        the first replayed entry's state digest checks the rest. Raises ValueError when they
        do not (the table is then half replaced), and TypeError, ValueError or IndexError on a
        malformed row.
        """
        self.begin_import()
        self.import_rows(rows)
        self.finish_import(digest)

    def begin_import(self) -> None:
        """Empty the table for a snapshot whose rows come in parts (`import_rows`, as each part
        arrives, so no turn of the joining shadow's loop builds them all), then `finish_import`."""
        self.calls = {}
        self._dirty.clear()
        self._export = None
        self._expiry = []
        self.active_per_member = [0] * len(self.active_per_member)

    def import_rows(self, rows: list[Any]) -> None:
        """Add snapshot rows (`Call.as_row()`); TypeError, ValueError or IndexError on a malformed row."""
        states = tuple(DialogState)
        for call_id, member, host, port, counted, heap_at, attempts, dialogs, transport, hashed in rows:
            call = Call(call_id, member, (host, port), counted, transport)
            for branch, method, from_tag, cseq, a_host, a_port, expires_at, a_transport, *draft in attempts:
                call.attempts[branch] = Attempt(
                    branch, method, from_tag, cseq, (a_host, a_port), expires_at, a_transport, _draft(draft)
                )
            for tag, callee_tag, state, d_host, d_port, branch, usage, expires_at, on_path, d_transport, *draft \
                    in dialogs:
                call.dialogs[(tag, callee_tag)] = Dialog(
                    tag, callee_tag, states[state], (d_host, d_port), branch, usage, expires_at,
                    on_path=on_path, transport=d_transport, draft=_draft(draft),
                )  # fmt: skip
            call.heap_at = heap_at
            call.hash = hashed
            self._count(call)
            self.calls[call_id] = call

    def finish_import(self, digest: int | None) -> None:
        """Every row is in: check them against the sender's `digest` (ValueError when they do not
        add up) and queue their expiries."""
        computed = 0
        for call in self.calls.values():
            computed ^= call.hash
        if digest is not None and digest != computed:
            raise ValueError("snapshot digest does not match its dialog rows")
        self._digest = computed
        self._expiry = [(call.heap_at, call_id) for call_id, call in self.calls.items() if call.heap_at != _NEVER]
        heapq.heapify(self._expiry)


def _draft(tail: list[Any]) -> Draft | None:
    """A row's draft (its last field; absent in rows of a version without records), as the
    tuple it was: the wire turns tuples into lists, and the digest hashes its repr."""
    if not tail or tail[0] is None:
        return None
    from_uri, to_uri, invited_at, cseq, answered_at = tail[0]
    answered = None if answered_at is None else float(answered_at)
    return (str(from_uri), str(to_uri), float(invited_at), int(cseq), answered)
