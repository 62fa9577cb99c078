"""What an operator counts: calls, spread, rejections and bad input. Plain integers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sipshadow.core.counting import count_request, count_response


@dataclass(slots=True)
class Counters:
    """Counts since start (or since `Gateway.import_state`); they only grow.

    `calls_per_member` is indexed like the config's members; `rejected` maps a status the ALG
    answered with itself (300 and up) to how often.
    """

    requests: int = 0
    responses: int = 0
    calls: int = 0
    #: SUBSCRIBE and REFER attempts that opened a Call-ID (routed like calls, not counted as one).
    subscriptions: int = 0
    calls_per_member: list[int] = field(default_factory=list)
    #: Requests that parsed, by method (`counting.COUNTED_METHODS`, else "other").
    requests_by_method: dict[str, int] = field(default_factory=dict)
    #: Responses that parsed, by status class: "1xx" ... "6xx".
    responses_by_class: dict[str, int] = field(default_factory=dict)
    rejected: dict[int, int] = field(default_factory=dict)
    malformed_requests: int = 0
    malformed_responses: int = 0
    stray_responses: int = 0
    #: Responses with our Via on top whose branch is garbled or whose MAC does not match their
    #: Call-ID, CSeq and source address: dropped, never relayed (§16.7, §26.1.5).
    forged_responses: int = 0
    unroutable_acks: int = 0
    keepalives: int = 0
    #: Responses whose next hop is the ALG itself: dropped instead of looped (§16.7 step 3).
    response_loops: int = 0
    #: New requests routed while every member looked down (better than refusing them all).
    routed_all_down: int = 0
    dialogs_reaped_early: int = 0
    dialogs_reaped_confirmed: int = 0
    probes_sent: int = 0
    member_down_events: int = 0
    member_up_events: int = 0
    #: Probe answers from the wrong address or for a probe no longer outstanding.
    stray_probe_answers: int = 0
    #: Reloads taken (`Reconfigure`) and drains or undrains that changed a member (`SetDraining`).
    reconfigurations: int = 0
    drain_changes: int = 0
    #: Call records made (`core.records`): one per INVITE attempt and per late-forked answer.
    call_records: int = 0

    def request(self, method: str) -> None:
        count_request(self, method)

    def response(self, status: int) -> None:
        count_response(self, status)

    def reject(self, status: int) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1

    def as_dict(self) -> dict[str, object]:
        """A deep copy as plain data (field name to int, list or dict): `Counters(**it)` rebuilds it."""
        return asdict(self)
