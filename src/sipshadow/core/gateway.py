"""The Gateway: events in, datagrams out. The only place the ALG's state changes.

See `sipshadow.core` for the rules. Requests are checked (§8.2, §16.3), dispatched (a new
INVITE by the policy, everything else of a call by the dialog table) and forwarded with our
Via and Record-Route (§16.6); responses return along the Via stack (§16.7).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import replace
from typing import Any

from sipshadow.core.actions import (
    TCP,
    UDP,
    UDP_FALLBACK_LIMIT_BYTES,
    UDP_REQUEST_LIMIT_BYTES,
    Address,
    SendMessage,
    format_address,
    uri_host,
)
from sipshadow.core.config import GatewayConfig
from sipshadow.core.counters import Counters
from sipshadow.core.counting import count_request, count_response
from sipshadow.core.dialogs import (
    Attempt,
    Call,
    Dialog,
    DialogState,
    DialogTable,
    Draft,
    TableExport,
    stable_hash64,
)
from sipshadow.core.entropy import Entropy
from sipshadow.core.events import Event, MessageReceived, Reconfigure, SetClock, SetDraining, TimerExpired
from sipshadow.core.health import HealthMonitor
from sipshadow.core.membership import Membership
from sipshadow.core.policies import make_policy, stable_hash
from sipshadow.core.records import (
    BYE,
    CALLEE,
    CALLER,
    CANCELLED,
    EXPIRED,
    FAILED,
    GATEWAY,
    OFF_PATH,
    RECORDS,
    CallRecord,
    clean_text,
    encode_record,
    record_id,
)
from sipshadow.core.replies import build_reply, lenient_via, salvage_reply
from sipshadow.core.validation import Rejection, check_request, unsupported_extensions
from sipshadow.sip import NameAddr, SipMessage, SipParseError, Via, parse_message
from sipshadow.sip.headers import Uri
from sipshadow.sip.memo import remember
from sipshadow.sip.stream import PING, PONG

MAGIC_COOKIE = "z9hG4bK"
#: Our branches: OWN_BRANCH + payload + "." + MAC, the payload a 16-hex-digit digest of the
#: request (`Gateway._branch`) or, for a health probe, "p.<member index>.<round>".
OWN_BRANCH = MAGIC_COOKIE + "ss"
PROBE_BRANCH = OWN_BRANCH + "p."
#: The MAC's size in bytes (hex doubles it): 80 bits, beyond guessing within a call's life.
MAC_BYTES = 10
_HEX = frozenset("0123456789abcdef")
#: One CANCEL, ACK or INVITE transaction on a branch: one MAC class (see `Gateway._mac`).
_INVITE_CLASS = frozenset({"INVITE", "CANCEL", "ACK"})
#: Requests that open a dialog when they carry no To tag (RFC 3261 §12, RFC 6665, RFC 3515).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
#: With a 503 when every member is drained or retired (§21.5.4): try again after a while.
_RETRY_AFTER = "Retry-After: 5"
#: Where a record is "sent" (`SendMessage.destination` of a `RECORDS` output): the store.
_RECORD_STORE: Address = ("", 0)
#: From and To URIs are kept this long at most in a record (bounded memory per call).
_URI_LIMIT = 256
#: `_mac`'s memo holds at most this many MACs (a few transactions' worth per call), then empties.
_MAC_MEMO_ENTRIES = 8192
_MAC_MEMO_MAX_CHARS = 512
_ALLOW = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"


def _ends(dialog: Dialog, request: SipMessage) -> bool:
    """BYE ends a call (§15); a NOTIFY with Subscription-State: terminated ends a
    subscription's dialog (RFC 6665 §4.1.2.3); nothing else ends a dialog."""
    if dialog.usage == "INVITE":
        return request.method == "BYE"
    if request.method != "NOTIFY":
        return False
    value = request.first("subscription-state")
    return value is not None and value.split(";", 1)[0].strip().lower() == "terminated"


def _well_formed(payload: str) -> bool:
    """A payload our branches carry: 16 lowercase hex digits, or a probe's "p.<index>.<round>"."""
    if payload.startswith("p."):
        index, dot, sequence = payload[2:].partition(".")
        return bool(dot) and _digits(index) and _digits(sequence)
    return len(payload) == 16 and _HEX.issuperset(payload)


def _digits(text: str) -> bool:
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def _late_fork(call: Call, from_tag: str, to_tag: str | None) -> bool:
    """A 2xx whose attempt already ended: a forking UAS's second answer (§13.2.2.4) comes from
    the caller's side of the call, not from a dialog's callee answering its own re-INVITE."""
    if to_tag is None or (to_tag, from_tag) in call.dialogs:
        return False
    return any(dialog.caller_tag == from_tag for dialog in call.dialogs.values())


Outputs = list[SendMessage]


class Gateway:
    """A dialog-aware, transaction-stateless SIP load balancer (RFC 3261 §16, §16.11).

    Two gateways built with the same config, fed the same events and the same draws, hold the
    same state (`state_digest`). `table`, `health` and `counters` are there to be read; only
    `handle` and `import_state` change them.
    """

    def __init__(self, config: GatewayConfig, entropy: Entropy) -> None:
        self.config = config
        host, port = config.service
        self.sent_by = format_address(config.service)
        #: Our Record-Route for each side's transport; both, outbound on top, when the two
        #: sides of a request differ (RFC 5658 §3.2: "double Record-Routing").
        self.record_routes = {UDP: f"<sip:{self.sent_by};lr>", TCP: f"<sip:{self.sent_by};transport=tcp;lr>"}
        own = {(host.lower(), port)} | {(h.lower(), p) for h, p in config.aliases}
        #: As a destination (bare) and as written in a Via or URI (an IPv6 host in brackets).
        self.own_addresses = own | {(uri_host(h), p) for h, p in own}
        self._entropy = entropy
        #: Every member ever configured, by index; `members` and the rest below follow it.
        self.membership = Membership(config.members)
        self.members: list[Address] = []
        self.member_index: dict[Address, int] = {}
        self.member_transports: list[str] = []
        count = len(config.members)
        self.table = DialogTable(count)
        self.health = HealthMonitor(count, config.probe_interval_s, config.probe_misses)
        self.counters = Counters(calls_per_member=[0] * count)
        self.policy = make_policy(config.policy, config.members, entropy)
        #: UTC seconds = event clock + this (`SetClock`): dates call records alike on replicas.
        self.utc_offset = 0.0
        #: Call records made during the current event, appended to its outputs.
        self._records: list[SendMessage] = []
        #: MACs by their input (`_mac`): a pure function's memo, so it is no state to replicate.
        self._macs: dict[str, str] = {}
        self._follow_membership()

    # -- the one entry point --------------------------------------------------------------

    def handle(self, event: Event) -> Outputs:
        """Take one event; return the datagrams to send, a list of `SendMessage` in send order,
        then the call records it made (transport `core.records.RECORDS`: for the record store).

        A datagram gives at most one: the request forwarded (our Via on top, Record-Route on a
        dialog-creating one, §16.6), the response forwarded along its Via stack (§16.7), or
        the ALG's own answer (200 to an OPTIONS for it; 400, 505, 416, 420, 481, 483). A timer
        reaps what expired by `event.now` and, when a probe round is due, gives one OPTIONS per
        member in configured order. Bad input never raises: a malformed request is counted and,
        if a usable Via is left, answered 400 (505 for another SIP version; an ACK never is,
        §17.2.1); a malformed, stray or forged response (its branch MAC does not match where it
        came from, `_authentic`), or a CRLF keep-alive, is counted and dropped.
        Only the entropy's error (`ReplayMismatch` on a shadow) passes through; anything else
        escaping is a bug. The deadlines it sets are `event.now` plus a config timeout: read
        `next_deadline()` again after each call.
        """
        if type(event) is MessageReceived:
            outputs = self._on_datagram(event)
        elif type(event) is TimerExpired:
            outputs = self._on_timer(event.now)
        elif type(event) is Reconfigure:
            return self._on_reconfigure(event)
        elif type(event) is SetClock:
            self.utc_offset = event.utc_offset
            return []
        else:
            return self._on_set_draining(event)  # type: ignore[arg-type]
        if self._records:  # call records after the message that ended the call (`core.records`)
            outputs.extend(self._records)
            self._records.clear()
        return outputs

    def next_deadline(self) -> float | None:
        """When the core next needs a `TimerExpired` (dialog expiry or a probe round), or None.

        An absolute time in seconds on the event clock; None when nothing is pending. It may
        be past (the first probe round is due at 0.0) or early (expiry is a lazy heap, so a
        timer at a stale deadline only re-queues), never late.
        """
        dialogs = self.table.next_deadline()
        probes = self.health.next_round_at
        if dialogs is None or (probes is not None and probes < dialogs):
            return probes
        return dialogs

    # -- replication: digest and state transfer -------------------------------------------

    def state_digest(self) -> int:
        """A 64-bit digest (unsigned int) of the replicated state; equal on replicas that agree.

        It covers the dialog table's digest, the policy cursor, member health (the next probe
        round included) and the calls, requests and responses counters. The primary logs it
        with every entry; the shadow compares after applying it. Cost: O(calls changed since
        the last digest). Never raises.
        """
        counters = self.counters
        return stable_hash64((
            self.table.digest, self.policy.cursor, self.health.summary(), counters.calls, counters.requests,
            counters.responses, self.config.policy, self.membership.summary(), self.config.call_records,
            self.utc_offset,
        ))  # fmt: skip

    def export_state(self) -> dict[str, Any]:
        """The whole replicated state as a fresh copy in plain data, for a joining shadow:

            {"dialogs": [Call.as_row(), ...], "dialogs_digest": int, "cursor": int,
             "health": {"next_round_at": float | None,
                        "members": [(up, misses, outstanding, sequence), ...]},
             "counters": Counters.as_dict(),
             "membership": {"members": Membership.export_state(), "policy": str,
                            "probe_interval_s": float, "probe_misses": int}}

        Times in it are absolute seconds on the primary's event clock.
        """
        state, cut = self.begin_export()
        self.end_export()
        return {"dialogs": cut.take(cut.total), **state}

    def begin_export(self) -> tuple[dict[str, Any], TableExport]:
        """`export_state()` without its dialog rows, and a cut of the dialog table whose rows the
        caller takes over the next loop turns (`TableExport.take`) while events go on changing
        the table; `end_export()` once they are all taken (or the transfer is abandoned). The
        rows with this state are exactly the state now: what changes later is in the log."""
        cut = self.table.begin_export()
        state = {
            "dialogs_digest": self.table.digest,
            "cursor": self.policy.cursor,
            "health": self.health.export_state(),
            "counters": self.counters.as_dict(),
            "membership": {"members": self.membership.export_state(), "policy": self.config.policy,
                           "probe_interval_s": self.config.probe_interval_s,
                           "probe_misses": self.config.probe_misses},
            "records": {"on": self.config.call_records, "utc_offset": self.utc_offset},
        }  # fmt: skip
        return state, cut

    def end_export(self) -> None:
        """The cut from `begin_export` is no longer read: changes stop preserving its rows."""
        self.table.end_export()

    def import_state(self, state: dict[str, Any]) -> None:
        """Replace the state with an `export_state()` (a shadow joining; not an event).

        The config must be the exporter's (members in the same order: the state names them by
        index). Tuples may arrive as lists and `rejected`'s keys as strings. Raises ValueError
        when the rows do not add up to `dialogs_digest` or the member count differs, and
        KeyError, TypeError or IndexError on any other misfit; the state is then half replaced
        and the gateway must be discarded.
        """
        self.begin_import(state)
        self.import_rows(state["dialogs"])
        self.finish_import(state)

    def begin_import(self, state: dict[str, Any]) -> None:
        """The first step of `import_state` for a snapshot whose dialog rows come in parts:
        `state` without its rows; then `import_rows` per part and `finish_import(state)`. The
        same errors as `import_state`, at whichever step meets the misfit."""
        membership = state.get("membership")
        if membership is not None:  # the exporter's cluster, reloads and drains included
            self.membership.import_state(membership["members"])
            self._reconfigured(membership["policy"], membership["probe_interval_s"], membership["probe_misses"],
                               now=None)  # fmt: skip
        self.table.begin_import()

    def import_rows(self, rows: list[Any]) -> None:
        """Dialog rows of the snapshot `begin_import` started (`Call.as_row()` tuples)."""
        self.table.import_rows(rows)

    def finish_import(self, state: dict[str, Any]) -> None:
        """The last step: the rows checked against the state's digest, the rest of the state."""
        self.table.finish_import(state.get("dialogs_digest"))
        records = state.get("records")
        if records is not None:  # the primary's: its shadow makes the same records, dated alike
            self.config = replace(self.config, call_records=bool(records["on"]))
            self.utc_offset = float(records["utc_offset"])
        self.policy.cursor = state["cursor"]
        self.health.import_state(state["health"])
        counters = dict(state["counters"])
        counters["rejected"] = {int(status): count for status, count in counters["rejected"].items()}
        self.counters = Counters(**counters)

    # -- datagrams ------------------------------------------------------------------------

    def _on_datagram(self, event: MessageReceived) -> Outputs:
        data = event.data
        if len(data) <= 4 and not data.strip(b"\r\n\x00 "):
            self.counters.keepalives += 1  # RFC 5626 §3.5.1 CRLF keep-alive
            if event.transport == TCP and data == PING:  # a stream's ping gets its pong
                return [SendMessage(PONG, event.source, TCP)]
            return []
        try:
            message = parse_message(data)
        except SipParseError as error:
            return self._unparseable(data, event, error)
        try:
            if message.method is not None:
                return self._on_request(message, event)
            return self._on_response(message, event)
        except SipParseError as error:
            if message.method is None:
                self.counters.malformed_responses += 1
                return []
            self.counters.malformed_requests += 1
            return self._reject(message, event, error.status, error.reason)
        except Rejection as rejection:
            return self._reject(message, event, rejection.status, rejection.reason, rejection.extra)

    def _unparseable(self, data: bytes, event: MessageReceived, error: SipParseError) -> Outputs:
        """Answer what we can of a message that does not parse; an ACK never (§17.2.1)."""
        salvaged = None if data[:4].upper() == b"ACK " else salvage_reply(data, error.status, error.reason)
        if salvaged is None:
            if data[:4].upper() == b"SIP/":
                self.counters.malformed_responses += 1
            else:
                self.counters.malformed_requests += 1
            return []
        self.counters.malformed_requests += 1
        self.counters.reject(error.status)
        reply, via = salvaged
        return [self._reply_output(reply, via, event)]

    def _reject(
        self, request: SipMessage, event: MessageReceived, status: int, reason: str, extra: tuple[str, ...] = ()
    ) -> Outputs:
        """Answer a request that failed validation; an ACK is never answered (§17.2.1)."""
        if request.method == "ACK":
            return []
        try:
            via = request.top_via
        except SipParseError:
            top = request.first("via")
            via = lenient_via(top) if top is not None else None
        if via is None:
            return []  # no usable Via: there is nowhere to send an answer
        return self._reply(request, via, event, status, reason, extra)

    # -- requests -------------------------------------------------------------------------

    def _on_request(self, request: SipMessage, event: MessageReceived) -> Outputs:
        """Validate the whole request, then route it; state changes only for one that passes."""
        count_request(self.counters, request.method or "")
        via, max_forwards = check_request(request)
        self._preprocess_route(request)
        method = request.method
        to_tag = request.to_tag
        if to_tag is None and method == "OPTIONS" and self._is_own_uri(request.uri):
            return self._reply(request, via, event, 200, "OK", (_ALLOW,))
        if max_forwards <= 0:
            if method == "ACK":
                return []
            return self._reply(request, via, event, 483, "Too Many Hops")
        if method != "ACK" and method != "CANCEL":
            extensions = unsupported_extensions(request)
            if extensions:
                raise Rejection(420, "Bad Extension", (f"Unsupported: {', '.join(extensions)}",))
        if method == "CANCEL":
            return self._on_cancel(request, event, via, max_forwards)
        if to_tag is not None:
            return self._on_in_dialog(request, event, via, max_forwards)
        if method in DIALOG_CREATING:
            return self._on_dialog_creating(request, event, via, max_forwards)
        return self._on_out_of_dialog(request, event, via, max_forwards)

    def _preprocess_route(self, request: SipMessage) -> None:
        """§16.4: undo a strict-routing previous hop, then take our own Route off the top."""
        if request.first("route") is None:
            return
        if self._is_own_uri(request.uri, record_route=True):
            last = request.pop_back("route")
            assert last is not None
            request.uri = NameAddr.parse(last).uri
        for _ in range(2):  # a double Record-Route (RFC 5658) comes back as two Routes of ours
            top = request.first_value("route")
            if top is None or not self._is_own_uri(NameAddr.parse(top).uri):
                return
            request.pop_front("route")

    def _on_dialog_creating(self, request: SipMessage, event: MessageReceived, via: Via, max_forwards: int) -> Outputs:
        """A new INVITE, SUBSCRIBE or REFER: its Call-ID's member (chosen now if new), Record-Routed."""
        call_id: str = request.call_id  # type: ignore[assignment]
        method: str = request.method  # type: ignore[assignment]
        call = self.table.get(call_id)
        if call is None:
            candidates = self._candidates()
            if not candidates:  # every member drained or retired: nobody takes new calls
                return self._reply(request, via, event, 503, "Service Unavailable", (_RETRY_AFTER,))
            member = self.policy.choose(candidates, call_id, self.table.active_per_member)
            call = self.table.open(call_id, member, event.source, counted=method == "INVITE",
                                   transport=event.transport)  # fmt: skip
            if method == "INVITE":
                self.counters.calls += 1
                self.counters.calls_per_member[member] += 1
            else:
                self.counters.subscriptions += 1
        destination = self.members[call.member]
        branch = self._branch(request, via, destination)
        cseq: tuple[int, str] = request.cseq  # type: ignore[assignment]
        draft = self._draft(request, cseq[0], event.now) if method == "INVITE" and self.config.call_records else None
        attempt = Attempt(branch, method, request.from_tag or "", cseq[0], event.source,
                          event.now + self.config.early_timeout_s, event.transport, draft)  # fmt: skip
        self.table.add_attempt(call, attempt)
        transport = self.member_transports[call.member]
        return self._forward(request, event, via, max_forwards, destination, transport, branch, record_route=True)

    def _on_out_of_dialog(self, request: SipMessage, event: MessageReceived, via: Via, max_forwards: int) -> Outputs:
        """No To tag and no dialog to open (MESSAGE, REGISTER, NOTIFY, ACK of a tagless 4xx…).

        A known Call-ID keeps its member; any other goes to a member by a hash of the Call-ID.
        """
        call_id: str = request.call_id  # type: ignore[assignment]
        call = self.table.get(call_id)
        if call is not None:
            member = call.member
        elif request.method == "ACK":
            self.counters.unroutable_acks += 1
            return []
        else:
            candidates = self._candidates()
            if not candidates:
                return self._reply(request, via, event, 503, "Service Unavailable", (_RETRY_AFTER,))
            member = candidates[stable_hash(call_id) % len(candidates)]
        return self._forward(request, event, via, max_forwards, self.members[member], self.member_transports[member])

    def _on_cancel(self, request: SipMessage, event: MessageReceived, via: Via, max_forwards: int) -> Outputs:
        """§9.1, §16.10: a CANCEL goes where the request it cancels went, in either direction."""
        call = self.table.get(request.call_id)  # type: ignore[arg-type]
        destination: Address | None = None
        transport = UDP
        if call is not None and request.to_tag is not None:
            dialog, from_caller = call.find(request.from_tag, request.to_tag)
            if dialog is not None:
                destination, transport = self._towards(call, dialog, from_caller)
        elif call is not None:
            cseq: tuple[int, str] = request.cseq  # type: ignore[assignment]
            from_tag = request.from_tag or ""
            for attempt in call.attempts.values():
                if attempt.method == "INVITE" and attempt.from_tag == from_tag and attempt.cseq == cseq[0]:
                    destination, transport = self.members[call.member], self.member_transports[call.member]
                    break
        if destination is None:
            return self._reply(request, via, event, 481, "Call/Transaction Does Not Exist")
        return self._forward(request, event, via, max_forwards, destination, transport)

    def _on_in_dialog(self, request: SipMessage, event: MessageReceived, via: Via, max_forwards: int) -> Outputs:
        """A request with a To tag must match a dialog of its Call-ID by tags, else 481 (§12.2.2)."""
        call = self.table.get(request.call_id)  # type: ignore[arg-type]
        dialog: Dialog | None = None
        from_caller = False
        if call is not None:
            dialog, from_caller = call.find(request.from_tag, request.to_tag)
            if dialog is None and request.method == "NOTIFY":
                dialog = self._notify_establishes(call, request, event.now)
        if call is None or dialog is None:
            if request.method == "ACK":
                self.counters.unroutable_acks += 1
                return []
            return self._reply(request, via, event, 481, "Call/Transaction Does Not Exist")
        destination, transport = self._towards(call, dialog, from_caller)
        self._follow(call, dialog, request, event.now, from_caller)
        return self._forward(request, event, via, max_forwards, destination, transport)

    def _towards(self, call: Call, dialog: Dialog, from_caller: bool) -> tuple[Address, str]:
        """A dialog's requests from the caller's side go to the member, the callee's back to the
        caller (where its dialog-creating request came from, the way it came): (address, transport)."""
        if from_caller:
            return self.members[call.member], self.member_transports[call.member]
        return dialog.caller, dialog.transport

    def _follow(self, call: Call, dialog: Dialog, request: SipMessage, now: float, from_caller: bool) -> None:
        """What a request does to its dialog: BYE or a final NOTIFY ends it, any other refreshes it."""
        if _ends(dialog, request):
            if dialog.draft is not None and dialog.state is DialogState.CONFIRMED:
                self._record(call, dialog.caller_tag, dialog.callee_tag, dialog.draft, dialog.branch, dialog.caller,
                             dialog.transport, now, 200, CALLER if from_caller else CALLEE, BYE)  # fmt: skip
            self.table.terminate(call, dialog, now + self.config.terminated_linger_s)
        elif dialog.state is DialogState.CONFIRMED:
            self.table.touch(call, dialog, now + self.config.confirmed_timeout_s)
        else:
            self.table.touch(call, dialog, None)

    def _notify_establishes(self, call: Call, request: SipMessage, now: float) -> Dialog | None:
        """A NOTIFY may arrive before the 2xx of its SUBSCRIBE or REFER and create the dialog
        (RFC 6665 §4.1.2.4): its To tag is the subscriber's From tag."""
        subscriber_tag, notifier_tag = request.to_tag, request.from_tag
        if subscriber_tag is None or notifier_tag is None:
            return None
        for attempt in call.attempts.values():
            if attempt.method != "INVITE" and attempt.from_tag == subscriber_tag:
                dialog = Dialog(subscriber_tag, notifier_tag, DialogState.CONFIRMED, attempt.source, attempt.branch,
                                attempt.method, now + self.config.confirmed_timeout_s,
                                transport=attempt.transport)  # fmt: skip
                self.table.put_dialog(call, dialog)
                return call.dialogs[(subscriber_tag, notifier_tag)]
        return None

    def _candidates(self) -> list[int]:
        """Members that may take a new call and are in service; all of those when every one
        looks down (better than refusing all); empty when every member is drained or retired."""
        healthy = self.health.healthy()
        membership = self.membership
        if not membership.all_eligible:
            eligible = membership.eligible()
            healthy = [member for member in healthy if member in eligible]
            if not eligible:
                return eligible
            if not healthy:
                self.counters.routed_all_down += 1
                return eligible
        if healthy:
            return healthy
        self.counters.routed_all_down += 1
        return membership.eligible()

    # -- forwarding (§16.6) ---------------------------------------------------------------

    def _forward(
        self,
        request: SipMessage,
        event: MessageReceived,
        via: Via,
        max_forwards: int,
        destination: Address,
        transport: str,
        branch: str | None = None,
        *,
        record_route: bool = False,
    ) -> Outputs:
        """§16.6: our Via (with `branch`, derived from the request unless given), Max-Forwards
        less one, received/rport stamped, and Record-Route when asked: one for the transport
        both sides use, or two when they differ (RFC 5658 §3.2, the outbound side's on top).

        A request for a UDP member that comes out larger than `UDP_REQUEST_LIMIT_BYTES` goes
        over TCP instead, when the config allows (§18.1.1), with its UDP form (up to
        `UDP_FALLBACK_LIMIT_BYTES`) for a member that refuses the connection. Over TCP a request
        towards a caller whose connection has closed goes to its Request-URI (the caller's
        Contact) instead.
        """
        if branch is None:
            branch = self._branch(request, via, destination)
        request.set("max-forwards", "Max-Forwards", str(max_forwards - 1))
        self._stamp_received(request, via, event.source, event.transport)
        data = self._with_route_and_via(request, branch, event.transport, transport, record_route)
        if (
            transport == UDP
            and len(data) > UDP_REQUEST_LIMIT_BYTES
            and self.config.large_requests_over_tcp
            and destination in self.member_index
        ):
            request.pop_front("via")
            if record_route:
                request.pop_front("record-route")
                if event.transport != UDP:
                    request.pop_front("record-route")
            # What a member that refuses TCP gets instead (§18.1.1), if it is not huge.
            over_udp = data if len(data) <= UDP_FALLBACK_LIMIT_BYTES else None
            data = self._with_route_and_via(request, branch, event.transport, TCP, record_route)
            return [SendMessage(data, destination, TCP, None, over_udp)]
        fallback = None
        if transport == TCP and destination not in self.member_index:
            fallback = _uri_address(request.uri)
        return [SendMessage(data, destination, transport, fallback)]

    def _with_route_and_via(
        self, request: SipMessage, branch: str, inbound: str, outbound: str, record_route: bool
    ) -> bytes:
        if record_route:
            request.headers.insert(0, ("record-route", "Record-Route", self.record_routes[inbound], None))
            if outbound != inbound:
                request.headers.insert(0, ("record-route", "Record-Route", self.record_routes[outbound], None))
        protocol = "TCP" if outbound == TCP else "UDP"
        request.push_front("via", "Via", f"SIP/2.0/{protocol} {self.sent_by};branch={branch}")
        return request.to_bytes()

    def _branch(self, request: SipMessage, via: Via, destination: Address) -> str:
        """A stateless branch (§16.11): equal for an INVITE, its retransmissions and its CANCEL
        (and the ACK of a non-2xx), which all go to `destination`; it ends in the MAC that
        `_on_response` checks (`_mac`)."""
        incoming = via.branch
        cseq = request.cseq
        number = cseq[0] if cseq else 0
        if incoming and incoming.startswith(MAGIC_COOKIE):
            key = f"{incoming}\x1f{via.host}\x1f{via.port}"
        else:
            key = f"{request.uri}\x1f{request.from_tag}\x1f{request.call_id}\x1f{number}\x1f{via}"
        digest = hashlib.blake2b(key.encode("latin-1", "replace"), digest_size=8).hexdigest()
        method = cseq[1] if cseq else request.method or ""
        peer = destination if _is_ip_literal(destination[0]) else UNBOUND_PEER
        return f"{OWN_BRANCH}{digest}.{self._mac(digest, request.call_id or '', number, method, peer)}"

    def _mac(self, payload: str, call_id: str, number: int, method: str, peer: Address) -> str:
        """The branch's MAC (hex): keyed BLAKE2b over what the request and its responses share.

        Inputs: the branch's payload (the digest, or a probe's "p.<index>.<round>"), the CSeq
        number, the method's class, the peer (where the request went, so where its responses
        come from) and the Call-ID. The class is "INVITE" for INVITE, CANCEL and ACK and the
        method itself otherwise: a CANCEL (CSeq method CANCEL, §9.1) and the ACK of a non-2xx
        (§17.1.1.3) must take their INVITE's branch, which a UAS matches them by (§17.2.3), and
        they share its Call-ID, CSeq number and destination; another method keeps its own
        class, so a branch seen on a MESSAGE cannot vouch for an INVITE response. The Call-ID
        goes last, and no other input can hold the separator, so the fields cannot shift. The
        key (`GatewayConfig.branch_key`) is the same on both replicas: so is every branch.
        """
        host, port = peer
        kind = "INVITE" if method in _INVITE_CLASS else method
        text = f"{payload}\x1f{number}\x1f{kind}\x1f{host.lower()}\x1f{port}\x1f{call_id}"
        mac = self._macs.get(text)  # the request's own MAC, when its responses come to be checked
        if mac is None:
            data = text.encode("utf-8", "surrogatepass")
            mac = hashlib.blake2b(data, key=self.config.branch_key, digest_size=MAC_BYTES).hexdigest()
            if len(text) <= _MAC_MEMO_MAX_CHARS:  # a flood of huge Call-IDs must not pin memory
                remember(self._macs, text, mac, _MAC_MEMO_ENTRIES)
        return mac

    def _authentic(self, branch: str, response: SipMessage, cseq: tuple[int, str], source: Address) -> str | None:
        """The payload of our `branch` if its MAC matches the response's Call-ID, CSeq and
        `source` (a response comes from where its request went); None for a forgery. A request
        sent to a host *name* (a member or Contact given by name, resolved by the shell) has
        a branch bound to `UNBOUND_PEER` instead: the core never learns the address its
        responses come from, so only the key, Call-ID and CSeq vouch for them."""
        payload, dot, mac = branch[len(OWN_BRANCH) :].rpartition(".")
        if not dot or len(mac) != 2 * MAC_BYTES or not _well_formed(payload):
            return None
        given = mac.encode("utf-8", "surrogatepass")
        for peer in (source, UNBOUND_PEER):
            expected = self._mac(payload, response.call_id or "", cseq[0], cseq[1], peer)
            if hmac.compare_digest(expected.encode(), given):
                return payload
        return None

    @staticmethod
    def _stamp_received(request: SipMessage, via: Via, source: Address, transport: str) -> None:
        """§18.2.1 and RFC 3581: tell the next hop where this request really came from. Over
        TCP the source port is always stamped (rport), as if asked for: it names the connection
        the responses must go back on (§18.2.2), which the sent-by port does not."""
        rport_requested = "rport" in via.params and not via.params["rport"]
        if transport == TCP and via.params.get("rport") != str(source[1]):
            rport_requested = True
        claimed = via.params.get("received", via.host.strip("[]"))
        if claimed == source[0] and via.host.strip("[]") == source[0] and not rport_requested:
            return
        params = dict(via.params)
        params["received"] = source[0]
        if rport_requested:
            params["rport"] = str(source[1])
        request.replace_front("via", str(Via(via.transport, via.host, via.port, params)))

    # -- responses (§16.7) ----------------------------------------------------------------

    def _on_response(self, response: SipMessage, event: MessageReceived) -> Outputs:
        count_response(self.counters, response.status)
        via = response.top_via
        cseq = response.cseq
        if via is None or cseq is None or not response.call_id:
            self.counters.malformed_responses += 1
            return []
        response.frame_datagram()
        branch = via.branch or ""
        if not branch.startswith(OWN_BRANCH) or (via.host, via.port or 5060) not in self.own_addresses:
            self.counters.stray_responses += 1
            return []
        payload = self._authentic(branch, response, cseq, event.source)
        if payload is None:
            self.counters.forged_responses += 1  # a guessed branch, or sent from elsewhere
            return []
        member = self.member_index.get(event.source)
        if member is not None and self.health.alive(member):
            self.counters.member_up_events += 1
        if branch.startswith(PROBE_BRANCH):
            self._on_probe_answer(payload)
            return []
        response.pop_front("via")
        next_via = response.top_via
        if next_via is None:
            self.counters.stray_responses += 1
            return []
        destination = next_via.response_address()
        if (destination[0].lower(), destination[1]) in self.own_addresses:
            self.counters.response_loops += 1  # §16.7 step 3: never our own next hop
            return []
        if cseq[1] in DIALOG_CREATING:
            self._track_response(response, branch, cseq[1], event.now)
        if next_via.transport.upper() == "TCP":  # §18.2.2: the request's connection, else a new one
            return [SendMessage(response.to_bytes(), destination, TCP, _sent_by_fallback(next_via))]
        return [SendMessage(response.to_bytes(), destination)]

    def _track_response(self, response: SipMessage, branch: str, method: str, now: float) -> None:
        """What a response to a dialog-creating request does to its call (§12.1, §13.2.2.4, §16.7)."""
        call = self.table.get(response.call_id)  # type: ignore[arg-type]
        status = response.status
        if call is None or status == 100:
            return
        attempt = call.attempts.get(branch)
        from_tag, to_tag = response.from_tag or "", response.to_tag
        if attempt is None and not (status // 100 == 2 and _late_fork(call, from_tag, to_tag)):
            return  # a response to an in-dialog request (a re-INVITE, either side): dialogs stay
        caller = attempt.source if attempt is not None else call.caller
        transport = attempt.transport if attempt is not None else call.transport
        config = self.config
        if status < 200:
            if attempt is not None:
                self.table.refresh_attempt(call, attempt, now + config.early_timeout_s)  # Timer C
            if to_tag is not None and method == "INVITE":
                ringing_until = now + config.early_timeout_s
                early = Dialog(from_tag, to_tag, DialogState.EARLY, caller, branch, method, ringing_until,
                               transport=transport)  # fmt: skip
                self.table.put_dialog(call, early)
            return
        if status < 300:
            draft = self._answered(call, attempt, from_tag, to_tag, now)
            if to_tag is not None:  # a 2xx always establishes its dialog
                on_path = self._record_routed(response)
                idle = config.confirmed_timeout_s if on_path else config.terminated_linger_s
                confirmed = Dialog(from_tag, to_tag, DialogState.CONFIRMED, caller, branch, method, now + idle,
                                   on_path=on_path, transport=transport, draft=draft)  # fmt: skip
                self.table.put_dialog(call, confirmed)
            elif draft is not None:
                self._record(call, from_tag, "", draft, branch, caller, transport, now, status, GATEWAY, OFF_PATH)
            self.table.end_attempt(call, branch, failed=False, linger_until=now + config.terminated_linger_s)
            return
        linger_until = now + config.terminated_linger_s
        if attempt is not None and attempt.draft is not None:
            cancelled = status == 487  # Request Terminated: the caller's CANCEL (§9.2)
            self._record(call, from_tag, to_tag or "", attempt.draft, branch, caller, transport, now, status,
                         CALLER if cancelled else CALLEE, CANCELLED if cancelled else FAILED)  # fmt: skip
        if to_tag is not None:  # kept to route the ACK of this non-2xx (§17.1.1.3)
            ended = Dialog(from_tag, to_tag, DialogState.TERMINATED, caller, branch, method, linger_until,
                           transport=transport)  # fmt: skip
            self.table.put_dialog(call, ended)
        self.table.end_attempt(call, branch, failed=True, linger_until=linger_until)

    # -- call records (`core.records`) ----------------------------------------------------

    def _draft(self, request: SipMessage, cseq: int, now: float) -> Draft:
        """A new INVITE's record in the making: its From and To URIs and when it came (UTC)."""
        return (_uri_of(request.first("from")), _uri_of(request.first("to")), now + self.utc_offset, cseq, None)

    def _answered(self, call: Call, attempt: Attempt | None, from_tag: str, to_tag: str | None,
                  now: float) -> Draft | None:  # fmt: skip
        """The draft a 2xx's dialog carries: the attempt's, answered now; for a late fork
        (§13.2.2.4), an answered sibling's with this answer time. None when the dialog is known
        already (a retransmission: the first 2xx answered it) or there is no record to make."""
        if to_tag is not None and (from_tag, to_tag) in call.dialogs:
            known = call.dialogs[(from_tag, to_tag)]
            if known.state is not DialogState.EARLY:
                return known.draft if known.state is DialogState.CONFIRMED else None
        source = attempt.draft if attempt is not None else None
        if source is None and attempt is None:
            source = next((d.draft for d in call.dialogs.values() if d.caller_tag == from_tag and d.draft), None)
        if source is None:
            return None
        from_uri, to_uri, invited_at, cseq, _ = source
        return (from_uri, to_uri, invited_at, cseq, now + self.utc_offset)

    def _record(
        self, call: Call, from_tag: str, to_tag: str, draft: Draft, branch: str, caller: Address, transport: str,
        now: float, status: int, ended_by: str, end_reason: str, *, utc: bool = False,
    ) -> None:  # fmt: skip
        """Make the call record of an attempt or answered dialog that ends at `now` (UTC already
        with `utc`); it leaves with this event's outputs."""
        from_uri, to_uri, invited_at, cseq, answered_at = draft
        ended_at = now if utc else now + self.utc_offset
        record = CallRecord(
            record_id=record_id(call.call_id, from_tag, to_tag, cseq, branch), call_id=clean_text(call.call_id),
            from_tag=clean_text(from_tag), to_tag=clean_text(to_tag), from_uri=clean_text(from_uri),
            to_uri=clean_text(to_uri), caller=format_address(caller),
            member=format_address(self.members[call.member]), transport=transport, invited_at=invited_at,
            answered_at=answered_at, ended_at=ended_at, status=status, ended_by=ended_by, end_reason=end_reason,
            duration_s=round(max(0.0, ended_at - answered_at), 6) if answered_at is not None else 0.0,
        )  # fmt: skip
        self.counters.call_records += 1
        self._records.append(SendMessage(encode_record(record), _RECORD_STORE, RECORDS))

    def _reaped(self, call: Call, lost: list[Attempt | Dialog], now: float) -> None:
        """Records of what expired: an INVITE with no final response by Timer C (408, §16.8), a
        confirmed call with no BYE and no request within `confirmed_timeout_s`, and an answered
        call whose 2xx lost our Record-Route and none of whose requests came through us since
        (its end is unknown: it is recorded as ended when answered, `OFF_PATH`)."""
        for part in lost:
            if part.draft is None:
                continue
            if type(part) is Attempt:
                self._record(call, part.from_tag, "", part.draft, part.branch, part.source, part.transport, now,
                             408, GATEWAY, EXPIRED)  # fmt: skip
                continue
            dialog: Dialog = part  # type: ignore[assignment]
            if dialog.state is not DialogState.CONFIRMED:
                continue
            answered = dialog.draft[4]  # type: ignore[index]
            # on the path: idle past its timeout, ended now; off it: its end unknown, ended when answered
            ended = now + self.utc_offset if dialog.on_path or answered is None else answered
            self._record(call, dialog.caller_tag, dialog.callee_tag, dialog.draft, dialog.branch,  # type: ignore[arg-type]
                         dialog.caller, dialog.transport, ended, 200, GATEWAY,
                         EXPIRED if dialog.on_path else OFF_PATH, utc=True)  # fmt: skip

    def _record_routed(self, response: SipMessage) -> bool:
        """Whether the 2xx kept our Record-Route: if not, the dialog's requests bypass us."""
        try:
            return any(self._is_own_uri(NameAddr.parse(value).uri) for value in response.values("record-route"))
        except SipParseError:
            return False

    # -- the operator's changes (reload, drain) -------------------------------------------

    def _on_reconfigure(self, event: Reconfigure) -> Outputs:
        """A reload: members reconciled by address (`Membership.reconcile`), policy and health
        settings replaced; dialogs keep their members. Sends nothing (new members are probed
        at the next round)."""
        self.membership.reconcile(event.members)
        self._reconfigured(event.policy, event.probe_interval_s, event.probe_misses, now=event.now)
        self.counters.reconfigurations += 1
        return []

    def _on_set_draining(self, event: SetDraining) -> Outputs:
        index = self.membership.index_of(event.member)
        if index is not None and self.membership.set_draining(index, event.draining):
            self.counters.drain_changes += 1
        return []

    def _reconfigured(self, policy: str, probe_interval_s: float, probe_misses: int, *, now: float | None) -> None:
        """The config and everything sized by the member count follow `membership`; the policy
        is built anew (round-robin keeps its cursor). `now` None: a snapshot's import, whose
        health state comes next."""
        specs = tuple(self.membership.specs)
        self.config = replace(self.config, members=specs, policy=policy, probe_interval_s=probe_interval_s,
                              probe_misses=probe_misses)  # fmt: skip
        cursor = self.policy.cursor
        self.policy = make_policy(policy, specs, self._entropy)
        self.policy.cursor = cursor % len(specs) if policy == "round-robin" and specs else 0
        self.health.reconfigure(probe_interval_s, probe_misses, now)
        self._follow_membership()

    def _follow_membership(self) -> None:
        """Resize what is indexed by member (new members are appended, never removed)."""
        specs = self.membership.specs
        self.members = [spec.address for spec in specs]
        self.member_index = {address: index for index, address in enumerate(self.members)}
        self.member_transports = [spec.transport for spec in specs]
        for _ in range(len(specs) - len(self.table.active_per_member)):
            self.table.active_per_member.append(0)
        for _ in range(len(specs) - len(self.counters.calls_per_member)):
            self.counters.calls_per_member.append(0)
        self.health.grow(len(specs))

    # -- timers and health ----------------------------------------------------------------

    def _on_timer(self, now: float) -> Outputs:
        for call, lost in self.table.expire(now):
            if self.config.call_records:
                self._reaped(call, lost, now)
            if any(type(part) is Dialog and part.state is DialogState.CONFIRMED for part in lost):
                self.counters.dialogs_reaped_confirmed += 1
            elif any(type(part) is Attempt or part.state is DialogState.EARLY for part in lost):  # type: ignore[union-attr]
                self.counters.dialogs_reaped_early += 1
        if self.health.next_round_at is None or now < self.health.next_round_at:
            return []
        was_up = [member.up for member in self.health.members]
        retired = self.membership.retired
        probes = [self._probe(index) for index in self.health.start_round(now) if not retired[index]]
        self.counters.member_down_events += sum(
            1 for up, member in zip(was_up, self.health.members, strict=True) if up and not member.up
        )
        self.counters.probes_sent += len(probes)
        return probes

    def _probe(self, index: int) -> SendMessage:
        member = self.members[index]
        sequence = self.health.members[index].sequence
        target = format_address(member)
        call_id = f"ssprobe-{index}-{sequence}@{self.sent_by}"
        payload = f"p.{index}.{sequence}"
        mac = self._mac(payload, call_id, sequence, "OPTIONS", member)
        transport = self.member_transports[index]
        lines = (
            f"OPTIONS sip:{target}{';transport=tcp' if transport == TCP else ''} SIP/2.0",
            f"Via: SIP/2.0/{transport.upper()} {self.sent_by};branch={PROBE_BRANCH}{index}.{sequence}.{mac}",
            "Max-Forwards: 70",
            f"From: <sip:sipshadow@{self.sent_by}>;tag=ssprobe{index}",
            f"To: <sip:{target}>",
            f"Call-ID: {call_id}",
            f"CSeq: {sequence} OPTIONS",
            "Content-Length: 0",
            "",
            "",
        )
        return SendMessage("\r\n".join(lines).encode("latin-1"), member, transport)

    def _on_probe_answer(self, payload: str) -> None:
        """A probe counts only for the probe outstanding.

        `payload` is an authentic probe branch's "p.<index>.<round>" (`_authentic`): its MAC
        names the member's address, so the answer came from the member it was sent to."""
        index_text, _, sequence_text = payload[2:].partition(".")
        index = int(index_text)
        if index >= len(self.members):  # never a probe we sent: signed by someone else holding the key
            self.counters.stray_probe_answers += 1
            return
        came_back = self.health.answered(index, int(sequence_text))
        if came_back is None:
            self.counters.stray_probe_answers += 1
        elif came_back:
            self.counters.member_up_events += 1

    # -- helpers --------------------------------------------------------------------------

    def _is_own_uri(self, uri_text: str, *, record_route: bool = False) -> bool:
        """A SIP URI naming the ALG with no user part (with `record_route`, the one we put in
        Record-Route, which carries `lr`: what a strict router hands back as Request-URI)."""
        uri = Uri.parse(uri_text)
        if uri.user is not None or uri.scheme not in ("sip", "sips"):
            return False
        if record_route and "lr" not in uri.params:
            return False
        return (uri.host, uri.port or 5060) in self.own_addresses

    def _reply(
        self,
        request: SipMessage,
        via: Via,
        event: MessageReceived,
        status: int,
        reason: str,
        extra: tuple[str, ...] = (),
    ) -> Outputs:
        if status >= 300:
            self.counters.reject(status)
        return [self._reply_output(build_reply(request, status, reason, extra), via, event)]

    @staticmethod
    def _reply_output(reply: bytes, via: Via, event: MessageReceived) -> SendMessage:
        """§18.2.2 with RFC 3581: over TCP, back on the request's connection (else to the source
        IP and sent-by port); over UDP to the source IP, and the source port if rport was asked
        for, else the sent-by port."""
        source = event.source
        if event.transport == TCP:
            return SendMessage(reply, source, TCP, (source[0], via.port or 5060))
        if "rport" in via.params:
            return SendMessage(reply, source)
        return SendMessage(reply, (source[0], via.port or 5060))


#: The MAC's peer for a request sent to a host name: responses may come from any address.
UNBOUND_PEER: Address = ("*", 0)


def _uri_of(value: str | None) -> str:
    """The URI of a From or To value, at most `_URI_LIMIT` characters; "" when unreadable.

    A value with no quoted display name is cut at its angle brackets (or its parameters)
    without a full parse: From carries a fresh tag in every call, so the parse memo never hits."""
    if value is None:
        return ""
    if '"' not in value:
        less = value.find("<")
        if less >= 0:
            greater = value.find(">", less)
            if greater > less:
                return value[less + 1 : greater].strip()[:_URI_LIMIT]
        elif "," not in value:
            return value.split(";", 1)[0].strip()[:_URI_LIMIT]
    try:
        return NameAddr.parse(value).uri[:_URI_LIMIT]
    except SipParseError:
        return ""


def _sent_by_fallback(via: Via) -> Address:
    """§18.2.2: where a response goes over TCP when its request's connection is gone."""
    return (via.params.get("received") or via.host).strip("[]"), via.port or 5060


def _uri_address(uri_text: str) -> Address | None:
    """The host and port of a SIP URI (5060 if none), or None if it does not parse."""
    try:
        uri = Uri.parse(uri_text)
    except SipParseError:
        return None
    return uri.host.strip("[]"), uri.port or 5060


#: `_is_ip_literal`'s answers by host (a request's destination is one of a few members): the
#: ipaddress parse costs more than the rest of choosing a branch. Cleared when full.
_IP_LITERALS: dict[str, bool] = {}
_IP_LITERALS_LIMIT = 4096


def _is_ip_literal(host: str) -> bool:
    known = _IP_LITERALS.get(host)
    if known is not None:
        return known
    try:
        ipaddress.ip_address(host.strip("[]"))
        literal = True
    except ValueError:
        literal = False
    return remember(_IP_LITERALS, host, literal, _IP_LITERALS_LIMIT)
