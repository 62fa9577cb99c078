"""The Gateway: events in, datagrams out. The only place the ALG's state changes.

See `sipshadow.core` for the rules. Requests are checked (§8.2, §16.3), dispatched (a new
INVITE by the policy, everything else of a call by the dialog table) and forwarded with our
Via and Record-Route (§16.6); responses return along the Via stack (§16.7).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sipshadow.core.actions import Address, SendDatagram
from sipshadow.core.config import GatewayConfig
from sipshadow.core.counters import Counters
from sipshadow.core.dialogs import Dialog, DialogState, DialogTable
from sipshadow.core.entropy import Entropy
from sipshadow.core.events import DatagramReceived, Event
from sipshadow.core.health import HealthMonitor
from sipshadow.core.policies import make_policy, stable_hash
from sipshadow.core.replies import build_reply, salvage_reply
from sipshadow.sip import NameAddr, SipMessage, SipParseError, Via, parse_message
from sipshadow.sip.headers import Uri

MAGIC_COOKIE = "z9hG4bK"
OWN_BRANCH = MAGIC_COOKIE + "ss"
PROBE_BRANCH = OWN_BRANCH + "p."
DEFAULT_MAX_FORWARDS = 70
IN_DIALOG_ONLY = frozenset({"ACK", "BYE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER"})
_LABELS = {"call-id": "Call-ID", "cseq": "CSeq", "from": "From", "to": "To"}
_ALLOW = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, NOTIFY, REFER"

Outputs = list[SendDatagram]


class Gateway:
    """A dialog-aware, transaction-stateless SIP load balancer (RFC 3261 §16)."""

    def __init__(self, config: GatewayConfig, entropy: Entropy) -> None:
        self.config = config
        host, port = config.service
        self.sent_by = f"{host}:{port}"
        self.record_route = f"<sip:{self.sent_by};lr>"
        self.own_addresses = {(host.lower(), port)} | {(h.lower(), p) for h, p in config.aliases}
        self.members: list[Address] = [member.address for member in config.members]
        self.table = DialogTable(len(self.members))
        self.health = HealthMonitor(len(self.members), config.probe_interval_s, config.probe_misses)
        self.policy = make_policy(config.policy, config.members, entropy)
        self.counters = Counters(calls_per_member=[0] * len(self.members))

    # -- the one entry point --------------------------------------------------------------

    def handle(self, event: Event) -> Outputs:
        if type(event) is DatagramReceived:
            return self._on_datagram(event)
        return self._on_timer(event.now)

    def next_deadline(self) -> float | None:
        """When the core next needs a `TimerExpired` (dialog expiry or a probe round)."""
        dialogs = self.table.next_deadline()
        probes = self.health.next_round_at
        if dialogs is None or (probes is not None and probes < dialogs):
            return probes
        return dialogs

    # -- replication: digest and state transfer -------------------------------------------

    def state_digest(self) -> int:
        """A 64-bit digest of the whole replicated state; equal on replicas that agree."""
        counters = self.counters
        summary = (
            f"{self.table.digest}\x1f{self.policy.cursor}\x1f{self.health.summary()}"
            f"\x1f{counters.calls}\x1f{counters.requests}\x1f{counters.responses}"
        )
        return int.from_bytes(hashlib.blake2b(summary.encode(), digest_size=8).digest(), "little")

    def export_state(self) -> dict[str, Any]:
        """The whole replicated state as plain data (lists, tuples, numbers, strings)."""
        return {
            "dialogs": self.table.export_state(),
            "dialogs_digest": self.table.digest,
            "cursor": self.policy.cursor,
            "health": self.health.export_state(),
            "counters": self.counters.as_dict(),
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Replace the state with an `export_state()` (a shadow joining; not an event)."""
        self.table.import_state(state["dialogs"], state.get("dialogs_digest"))
        self.policy.cursor = state["cursor"]
        self.health.import_state(state["health"])
        counters = dict(state["counters"])
        counters["rejected"] = {int(status): count for status, count in counters["rejected"].items()}
        self.counters = Counters(**counters)

    # -- datagrams ------------------------------------------------------------------------

    def _on_datagram(self, event: DatagramReceived) -> Outputs:
        data = event.data
        if len(data) <= 4 and not data.strip(b"\r\n\x00 "):
            self.counters.keepalives += 1  # RFC 5626 §3.5.1 CRLF keep-alive
            return []
        try:
            message = parse_message(data)
        except SipParseError as error:
            return self._unparseable(data, event.source, error.reason)
        try:
            if message.method is not None:
                return self._on_request(message, event)
            return self._on_response(message, event)
        except SipParseError as error:
            if message.method is None:
                self.counters.malformed_responses += 1
                return []
            return self._reject_malformed(message, event.source, error.reason)

    def _unparseable(self, data: bytes, source: Address, reason: str) -> Outputs:
        salvaged = salvage_reply(data, 400, reason)
        if salvaged is None:
            if data[:4].upper() == b"SIP/":
                self.counters.malformed_responses += 1
            else:
                self.counters.malformed_requests += 1
            return []
        self.counters.malformed_requests += 1
        self.counters.reject(400)
        reply, via = salvaged
        return [SendDatagram(reply, self._reply_address(via, source))]

    def _reject_malformed(self, request: SipMessage, source: Address, reason: str) -> Outputs:
        self.counters.malformed_requests += 1
        if request.method == "ACK":
            return []  # §17.2.1: an ACK is never answered
        try:
            via = request.top_via
        except SipParseError:
            via = None
        if via is None:
            return []  # no usable Via: there is nowhere to send an answer
        self.counters.reject(400)
        reply = build_reply(request, 400, reason)
        return [SendDatagram(reply, self._reply_address(via, source))]

    # -- requests -------------------------------------------------------------------------

    def _on_request(self, request: SipMessage, event: DatagramReceived) -> Outputs:
        self.counters.requests += 1
        via, max_forwards = self._check_request(request)
        method = request.method
        to_tag = request.to_tag
        if to_tag is None and method == "OPTIONS" and self._addressed_to_me(request.uri):
            return self._reply(request, via, event.source, 200, "OK", (_ALLOW,))
        if max_forwards <= 0:
            if method == "ACK":
                return []
            return self._reply(request, via, event.source, 483, "Too Many Hops")
        if method == "CANCEL":
            dialog = self.table.get(request.call_id)  # type: ignore[arg-type]
            if dialog is None:
                return self._reply(request, via, event.source, 481, "Call/Transaction Does Not Exist")
            return self._forward(request, event, via, max_forwards, self.members[dialog.member])
        if to_tag is None and method == "INVITE":
            return self._on_new_invite(request, event, via, max_forwards)
        if to_tag is None and method not in IN_DIALOG_ONLY:
            return self._on_out_of_dialog(request, event, via, max_forwards)
        return self._on_in_dialog(request, event, via, max_forwards)

    def _check_request(self, request: SipMessage) -> tuple[Via, int]:
        """Basic sanity (§8.2, §16.3); raises `SipParseError` with the 400 reason phrase."""
        via = request.top_via
        if via is None:
            raise SipParseError("Missing Via")
        seen = {"call-id": 0, "cseq": 0, "from": 0, "to": 0}
        for entry in request.headers:
            if entry[0] in seen:
                seen[entry[0]] += 1
        for key, found in seen.items():
            if found != 1:
                raise SipParseError(f"{'Missing' if found == 0 else 'Duplicate'} {_LABELS[key]}")
        cseq = request.cseq
        assert cseq is not None
        if cseq[1] != request.method:
            raise SipParseError("CSeq method does not match request method")
        if not request.call_id:
            raise SipParseError("Empty Call-ID")
        request.from_tag  # noqa: B018 -- parses From, raising on a malformed one
        request.to_tag  # noqa: B018
        max_forwards = DEFAULT_MAX_FORWARDS
        value = request.first("max-forwards")
        if value is not None:
            if not (value.isascii() and value.isdigit()) or len(value) > 3:
                raise SipParseError("Bad Max-Forwards")
            max_forwards = int(value)
        length = request.first("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()) or len(length) > 9:
                raise SipParseError("Bad Content-Length")
            if int(length) != len(request.body):
                raise SipParseError("Content-Length does not match body")
        return via, max_forwards

    def _on_new_invite(self, request: SipMessage, event: DatagramReceived, via: Via, max_forwards: int) -> Outputs:
        call_id: str = request.call_id  # type: ignore[assignment]
        now = event.now
        dialog = self.table.get(call_id)
        if dialog is not None:
            if dialog.state is DialogState.TERMINATED:
                self.table.reopen(dialog, now + self.config.early_timeout_s)
            member = dialog.member
        else:
            candidates = self.health.healthy()
            if not candidates:
                return self._reply(request, via, event.source, 503, "Service Unavailable")
            member = self.policy.choose(candidates, call_id, self.table.active_per_member)
            self.table.open(call_id, member, event.source, request.from_tag, now + self.config.early_timeout_s)
            self.counters.calls += 1
            self.counters.calls_per_member[member] += 1
        return self._forward(request, event, via, max_forwards, self.members[member], record_route=True)

    def _on_out_of_dialog(self, request: SipMessage, event: DatagramReceived, via: Via, max_forwards: int) -> Outputs:
        candidates = self.health.healthy()
        if not candidates:
            return self._reply(request, via, event.source, 503, "Service Unavailable")
        call_id: str = request.call_id  # type: ignore[assignment]
        member = candidates[stable_hash(call_id) % len(candidates)]
        return self._forward(request, event, via, max_forwards, self.members[member])

    def _on_in_dialog(self, request: SipMessage, event: DatagramReceived, via: Via, max_forwards: int) -> Outputs:
        dialog = self.table.get(request.call_id)  # type: ignore[arg-type]
        if dialog is None:
            if request.method == "ACK":
                self.counters.unroutable_acks += 1
                return []
            return self._reply(request, via, event.source, 481, "Call/Transaction Does Not Exist")
        destination = self._dialog_destination(dialog, request)
        if request.method == "BYE":
            self.table.terminate(dialog, event.now + self.config.terminated_linger_s)
        elif dialog.state is DialogState.CONFIRMED:
            self.table.set_expiry(dialog, event.now + self.config.confirmed_timeout_s)
        return self._forward(request, event, via, max_forwards, destination)

    def _dialog_destination(self, dialog: Dialog, request: SipMessage) -> Address:
        """Caller-side requests go to the member; callee-side ones back to the caller."""
        if dialog.caller_tag is None or request.from_tag == dialog.caller_tag:
            return self.members[dialog.member]
        return dialog.caller

    # -- forwarding (§16.6) ---------------------------------------------------------------

    def _forward(
        self,
        request: SipMessage,
        event: DatagramReceived,
        via: Via,
        max_forwards: int,
        destination: Address,
        *,
        record_route: bool = False,
    ) -> Outputs:
        route = request.first_value("route")
        if route is not None and self._addressed_to_me(NameAddr.parse(route).uri):
            request.pop_front("route")  # §16.4: the top Route was ours
        request.set("max-forwards", "Max-Forwards", str(max_forwards - 1))
        branch = self._branch(request, via)
        self._stamp_received(request, via, event.source)
        if record_route:
            request.headers.insert(0, ("record-route", "Record-Route", self.record_route, None))
        request.push_front("via", "Via", f"SIP/2.0/UDP {self.sent_by};branch={branch}")
        return [SendDatagram(request.to_bytes(), destination)]

    def _branch(self, request: SipMessage, via: Via) -> str:
        """A stateless branch (§16.11): equal for an INVITE, its retransmissions and its CANCEL."""
        incoming = via.branch
        if incoming and incoming.startswith(MAGIC_COOKIE):
            key = f"{incoming}\x1f{via.host}\x1f{via.port}"
        else:
            cseq = request.cseq
            number = cseq[0] if cseq else 0
            key = f"{request.uri}\x1f{request.from_tag}\x1f{request.call_id}\x1f{number}\x1f{via}"
        digest = hashlib.blake2b(key.encode("latin-1", "replace"), digest_size=8).hexdigest()
        return OWN_BRANCH + digest

    @staticmethod
    def _stamp_received(request: SipMessage, via: Via, source: Address) -> None:
        """§18.2.1 and RFC 3581: tell the next hop where this request really came from."""
        rport_requested = "rport" in via.params and not via.params["rport"]
        claimed = via.params.get("received", via.host.strip("[]"))
        if claimed == source[0] and via.host.strip("[]") == source[0] and not rport_requested:
            return
        params = dict(via.params)
        params["received"] = source[0]
        if rport_requested:
            params["rport"] = str(source[1])
        request.replace_front("via", str(Via(via.transport, via.host, via.port, params)))

    # -- responses (§16.7) ----------------------------------------------------------------

    def _on_response(self, response: SipMessage, event: DatagramReceived) -> Outputs:
        self.counters.responses += 1
        via = response.top_via
        cseq = response.cseq
        if via is None or cseq is None or not response.call_id:
            self.counters.malformed_responses += 1
            return []
        branch = via.branch or ""
        if not branch.startswith(OWN_BRANCH) or (via.host, via.port or 5060) not in self.own_addresses:
            self.counters.stray_responses += 1
            return []
        if branch.startswith(PROBE_BRANCH):
            self._on_probe_answer(branch)
            return []
        response.pop_front("via")
        next_via = response.top_via
        if next_via is None:
            self.counters.stray_responses += 1
            return []
        if cseq[1] == "INVITE":
            self._track_invite_response(response, event.now)
        return [SendDatagram(response.to_bytes(), next_via.response_address())]

    def _track_invite_response(self, response: SipMessage, now: float) -> None:
        dialog = self.table.get(response.call_id)  # type: ignore[arg-type]
        if dialog is None:
            return
        status = response.status
        if 200 <= status < 300:
            self.table.confirm(dialog, now + self.config.confirmed_timeout_s)
        elif status >= 300 and dialog.state is DialogState.EARLY:
            self.table.terminate(dialog, now + self.config.terminated_linger_s)

    # -- timers and health ----------------------------------------------------------------

    def _on_timer(self, now: float) -> Outputs:
        for dialog in self.table.expire(now):
            if dialog.state is DialogState.EARLY:
                self.counters.dialogs_reaped_early += 1
            elif dialog.state is DialogState.CONFIRMED:
                self.counters.dialogs_reaped_confirmed += 1
        if self.health.next_round_at is None or now < self.health.next_round_at:
            return []
        was_up = [member.up for member in self.health.members]
        probes = [self._probe(index) for index in self.health.start_round(now)]
        self.counters.member_down_events += sum(
            1 for up, member in zip(was_up, self.health.members, strict=True) if up and not member.up
        )
        self.counters.probes_sent += len(probes)
        return probes

    def _probe(self, index: int) -> SendDatagram:
        host, port = self.members[index]
        sequence = self.health.members[index].sequence
        target = f"[{host}]" if ":" in host else host
        lines = (
            f"OPTIONS sip:{target}:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.sent_by};branch={PROBE_BRANCH}{index}.{sequence}",
            "Max-Forwards: 70",
            f"From: <sip:sipshadow@{self.sent_by}>;tag=ssprobe{index}",
            f"To: <sip:{target}:{port}>",
            f"Call-ID: ssprobe-{index}-{sequence}@{self.sent_by}",
            f"CSeq: {sequence} OPTIONS",
            "Content-Length: 0",
            "",
            "",
        )
        return SendDatagram("\r\n".join(lines).encode("latin-1"), (host, port))

    def _on_probe_answer(self, branch: str) -> None:
        index_text, _, sequence_text = branch[len(PROBE_BRANCH) :].partition(".")
        if not (index_text.isascii() and index_text.isdigit() and sequence_text.isascii() and sequence_text.isdigit()):
            self.counters.stray_responses += 1
            return
        index = int(index_text)
        if index >= len(self.members):
            self.counters.stray_responses += 1
            return
        if self.health.answered(index, int(sequence_text)):
            self.counters.member_up_events += 1

    # -- helpers --------------------------------------------------------------------------

    def _addressed_to_me(self, uri_text: str) -> bool:
        uri = Uri.parse(uri_text)
        return uri.user is None and (uri.host, uri.port or 5060) in self.own_addresses

    def _reply(
        self,
        request: SipMessage,
        via: Via,
        source: Address,
        status: int,
        reason: str,
        extra: tuple[str, ...] = (),
    ) -> Outputs:
        if status >= 300:
            self.counters.reject(status)
        return [SendDatagram(build_reply(request, status, reason, extra), self._reply_address(via, source))]

    @staticmethod
    def _reply_address(via: Via, source: Address) -> Address:
        """§18.2.2 with RFC 3581: the source IP; the source port if rport was asked for."""
        if "rport" in via.params:
            return source
        return source[0], via.port or 5060
