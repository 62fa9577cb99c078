"""Prometheus exposition of a node's status (prometheus_client), served on the node's own loop.

Why pull-time: every counter and gauge is read, when a scrape arrives, from the
`StatusDocument` the node already builds for its status file (`Node.status`, `HaNode.status`),
so nothing is counted twice and nothing is added to the hot path. Only durations, which the
document does not keep, are observed as they happen, into three histograms. The HTTP server is
an asyncio server on the node's loop, not prometheus_client's thread: the status function reads
live state that the loop mutates.

A field that is None in the document (a shadow has no core counters, a solo node no `ha`)
yields no sample rather than a zero that lies; counters end in `_total`, times are seconds.

Metric names (label in braces):

- node: `sipshadow_build_info{version}`, `sipshadow_uptime_seconds`, `sipshadow_dialogs`,
  `sipshadow_internal_errors_total`, `sipshadow_send_errors_total`, `sipshadow_send_failures_total`,
  `sipshadow_send_family_mismatches_total`, `sipshadow_send_unresolvable_total`,
  `sipshadow_send_resolution_overflow_total`, `sipshadow_send_self_loops_total`,
  `sipshadow_send_resolutions_total`, `sipshadow_tcp_connections`, `sipshadow_tcp_events_total{event}`
- call records (`[cdr]`): `sipshadow_records_{submitted,written,duplicates,write_failures}_total`,
  `sipshadow_records_{journal_errors,corrupt,lost}_total`, `sipshadow_records_pending_bytes`,
  `sipshadow_records_held_in_memory`
- core: `sipshadow_requests_total{method}`, `sipshadow_responses_total{class}`, `sipshadow_calls_total`,
  `sipshadow_subscriptions_total`, `sipshadow_rejections_total{status}`, `sipshadow_malformed_total{kind}`,
  `sipshadow_stray_responses_total`, `sipshadow_forged_responses_total`, `sipshadow_unroutable_acks_total`,
  `sipshadow_keepalives_total`, `sipshadow_response_loops_total`, `sipshadow_routed_all_down_total`,
  `sipshadow_dialogs_reaped_total{state}`, `sipshadow_probes_sent_total`, `sipshadow_stray_probe_answers_total`,
  `sipshadow_member_down_events_total`, `sipshadow_member_up_events_total`, `sipshadow_reconfigurations_total`,
  `sipshadow_drain_changes_total`, `sipshadow_call_records_total`
- members (`member` = HOST:PORT): `sipshadow_member_calls_total`, `sipshadow_member_active_calls`,
  `sipshadow_member_up`, `sipshadow_member_draining`, `sipshadow_member_retired`,
  `sipshadow_member_missed_probes`, `sipshadow_member_weight`
- replication (a primary): `sipshadow_replication_recorded_seq`, `sipshadow_replication_released_seq`,
  `sipshadow_replication_shadow_attached`, `sipshadow_replication_shadow_joining`,
  `sipshadow_replication_lag_entries`,
  `sipshadow_replication_lag_bytes`, `sipshadow_replication_last_snapshot_seconds`,
  `sipshadow_replication_entries_sent_total`, `sipshadow_replication_frames_sent_total`,
  `sipshadow_replication_acks_total`, `sipshadow_replication_snapshots_sent_total`,
  `sipshadow_replication_shadow_losses_total`, `sipshadow_replication_commit_timeouts_total`,
  `sipshadow_replication_payloads_sent_total`, `sipshadow_replication_refused_frames_total`,
  `sipshadow_replication_release_errors_total`, `sipshadow_replication_joins_total`,
  `sipshadow_replication_join_timeouts_total`, `sipshadow_replication_commit_lapses_total`
- HA: `sipshadow_role{role}` (starting|shadow|taking-over|primary|fenced|solo), `sipshadow_epoch`,
  `sipshadow_peer_alive`, `sipshadow_arbiter_peer_alive`, `sipshadow_takeovers_total`,
  `sipshadow_aborted_takeovers_total`, `sipshadow_heartbeats_refused_total`,
  `sipshadow_detector_stalls_total`, `sipshadow_gated_outputs_total`, `sipshadow_held_by_arbiter_total`,
  `sipshadow_step_downs_total`, `sipshadow_fences_total`, `sipshadow_link_refused_total{reason}`,
  `sipshadow_alarms`
- a shadow: `sipshadow_shadow_synced`, `sipshadow_shadow_applied_seq`, `sipshadow_shadow_released_seq`,
  `sipshadow_shadow_dialogs`, `sipshadow_shadow_pending_entries`, `sipshadow_shadow_snapshots_total`,
  `sipshadow_shadow_entries_applied_total`, `sipshadow_shadow_refused_frames_total`,
  `sipshadow_shadow_divergences_total`, `sipshadow_shadow_connects_total`,
  `sipshadow_shadow_payload_requests_total`, `sipshadow_shadow_payloads_received_total`,
  `sipshadow_tap_buffered`, `sipshadow_tap_received_total`, `sipshadow_tap_matched_total`,
  `sipshadow_tap_pruned_total`
- histograms: `sipshadow_takeover_seconds`, `sipshadow_output_commit_delay_seconds`,
  `sipshadow_heartbeat_rtt_seconds`
- prometheus_client's `process_*` (start time, CPU, memory, file descriptors), for every role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sipshadow import __version__
from sipshadow.core.counters import Counters
from sipshadow.runtime.status import FollowerStatus, HaStatus, MemberStatus, StatusDocument, TapStatus

log = logging.getLogger("sipshadow.metrics")

#: A request head longer than this (bytes) closes the connection.
MAX_HEAD_BYTES = 8 * 1024
#: A request head not complete within this (s) closes the connection; so does a response not taken.
HEAD_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0

#: Verdict to serving: tens of ms on loopback, up to seconds with a VIP claim on a slow network.
TAKEOVER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Entry recorded to the shadow's ack: 100 us on one host, up to the commit timeout.
COMMIT_DELAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
#: A heartbeat's round trip: 100 us on a LAN, 100 ms means the link is in trouble.
HEARTBEAT_RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

#: `sipshadow_role` has one sample per role, 1 for the current one (`ha.roles.Role`, and solo).
ROLES = ("starting", "shadow", "taking-over", "primary", "fenced", "solo")

#: (field of the source, metric name, HELP): a counter when the name ends in `_total`, else a gauge.
Scalar = tuple[str, str, str]

NODE: tuple[Scalar, ...] = (
    ("uptime_s", "sipshadow_uptime_seconds", "Seconds since the serving node started."),
    ("dialogs", "sipshadow_dialogs", "Dialogs the ALG holds now, in all states."),
    ("internal_errors", "sipshadow_internal_errors_total", "Events the core raised on (dropped and logged)."),
    ("send_errors", "sipshadow_send_errors_total", "Send errors the service socket reported."),
    ("send_failures", "sipshadow_send_failures_total", "Outgoing messages dropped because sending failed."),
    ("family_mismatches", "sipshadow_send_family_mismatches_total",
     "Outgoing messages dropped: destination not in the socket's address family."),
    ("unresolvable", "sipshadow_send_unresolvable_total", "Outgoing messages dropped: destination did not resolve."),
    ("resolution_overflow", "sipshadow_send_resolution_overflow_total",
     "Outgoing messages dropped: too many names or datagrams waiting for resolution."),
    ("self_loops", "sipshadow_send_self_loops_total", "Outgoing messages dropped: addressed to this node itself."),
    ("resolutions", "sipshadow_send_resolutions_total", "DNS resolutions started for destination names."),
    ("tcp_connections", "sipshadow_tcp_connections", "TCP connections live at the service address."),
)  # fmt: skip

CORE: tuple[Scalar, ...] = (
    ("calls", "sipshadow_calls_total", "Calls (initial INVITEs) routed to a member."),
    ("subscriptions", "sipshadow_subscriptions_total", "SUBSCRIBE and REFER attempts that opened a Call-ID."),
    ("stray_responses", "sipshadow_stray_responses_total", "Responses matching nothing the ALG relayed, dropped."),
    ("forged_responses", "sipshadow_forged_responses_total",
     "Responses with the ALG's Via whose branch MAC did not verify, dropped."),
    ("unroutable_acks", "sipshadow_unroutable_acks_total", "ACKs the ALG could not route, dropped."),
    ("keepalives", "sipshadow_keepalives_total", "Keepalives (CRLF pings) received."),
    ("response_loops", "sipshadow_response_loops_total", "Responses whose next hop was the ALG itself, dropped."),
    ("routed_all_down", "sipshadow_routed_all_down_total", "New requests routed while every member looked down."),
    ("probes_sent", "sipshadow_probes_sent_total", "Health probes (OPTIONS) sent to members."),
    ("stray_probe_answers", "sipshadow_stray_probe_answers_total",
     "Probe answers from the wrong address or for a probe no longer outstanding."),
    ("member_down_events", "sipshadow_member_down_events_total", "Times a member was marked down."),
    ("member_up_events", "sipshadow_member_up_events_total", "Times a member was marked up again."),
    ("reconfigurations", "sipshadow_reconfigurations_total", "Configuration reloads the core took."),
    ("drain_changes", "sipshadow_drain_changes_total", "Drains or undrains that changed a member."),
    ("call_records", "sipshadow_call_records_total", "Call records the core made (one per INVITE attempt)."),
)  # fmt: skip

MEMBER: tuple[Scalar, ...] = (
    ("calls", "sipshadow_member_calls_total", "Calls routed to the member."),
    ("active_calls", "sipshadow_member_active_calls", "Calls the member holds now."),
    ("up", "sipshadow_member_up", "1 if the member gets new calls (health probes answered), else 0."),
    ("draining", "sipshadow_member_draining", "1 if the member is drained by the operator (no new calls), else 0."),
    ("retired", "sipshadow_member_retired", "1 if the member left the config at a reload (no new calls), else 0."),
    ("missed_probes", "sipshadow_member_missed_probes", "Probe rounds in a row the member did not answer."),
    ("weight", "sipshadow_member_weight", "The member's share of new calls under weighted-random."),
)  # fmt: skip

REPLICATION: tuple[Scalar, ...] = (
    ("seq", "sipshadow_replication_recorded_seq", "Sequence number of the last log entry recorded."),
    ("released", "sipshadow_replication_released_seq", "Sequence number of the last entry whose outputs were sent."),
    ("shadow_attached", "sipshadow_replication_shadow_attached", "1 if a shadow is connected, else 0."),
    ("shadow_joining", "sipshadow_replication_shadow_joining",
     "1 while the attached shadow takes its snapshot and catches up (outputs not held for it), else 0."),
    ("lag_entries", "sipshadow_replication_lag_entries", "Log entries recorded that the shadow has not acknowledged."),
    ("lag_bytes", "sipshadow_replication_lag_bytes", "Encoded size of the entries the shadow has not acknowledged."),
    ("entries_sent", "sipshadow_replication_entries_sent_total", "Log entries sent to a shadow."),
    ("frames_sent", "sipshadow_replication_frames_sent_total", "Frames sent to a shadow."),
    ("acks", "sipshadow_replication_acks_total", "Acknowledgements received from a shadow."),
    ("snapshots_sent", "sipshadow_replication_snapshots_sent_total", "State snapshots sent to a shadow."),
    ("shadow_losses", "sipshadow_replication_shadow_losses_total",
     "Shadows detached (connection lost or commit timeout)."),
    ("commit_timeouts", "sipshadow_replication_commit_timeouts_total", "Outputs released without the shadow's ack."),
    ("payloads_sent", "sipshadow_replication_payloads_sent_total",
     "Datagrams sent to a shadow that had no tapped copy."),
    ("refused_frames", "sipshadow_replication_refused_frames_total",
     "Frames from a shadow that failed authentication or decoding."),
    ("release_errors", "sipshadow_replication_release_errors_total", "Released outputs the sender raised on."),
    ("joins", "sipshadow_replication_joins_total", "Shadows that caught up with the log after their snapshot."),
    ("join_timeouts", "sipshadow_replication_join_timeouts_total",
     "Shadows dropped for not catching up with the log within the join timeout."),
    ("commit_lapses", "sipshadow_replication_commit_lapses_total",
     "Times outputs stopped waiting for a slow or silent shadow until it caught up again."),
)  # fmt: skip

HA: tuple[Scalar, ...] = (
    ("epoch", "sipshadow_epoch", "The pair's epoch as this node knows it (raised by each takeover)."),
    ("peer_alive", "sipshadow_peer_alive", "1 if heartbeats from the peer arrived within the detection window."),
    ("arbiter_peer_alive", "sipshadow_arbiter_peer_alive", "1 if the peer is heard on the service network (arbiter)."),
    ("aborted_takeovers", "sipshadow_aborted_takeovers_total", "Takeovers given up (the address was still owned)."),
    ("heartbeats_refused", "sipshadow_heartbeats_refused_total",
     "Heartbeats that failed authentication or decoding."),
    ("detector_stalls", "sipshadow_detector_stalls_total", "Turns of the failure detector's loop this node missed."),
    ("gated_outputs", "sipshadow_gated_outputs_total", "Replica outputs gated (counted, never sent)."),
    ("held_by_arbiter", "sipshadow_held_by_arbiter_total",
     "Takeovers held back because the arbiter still heard the peer."),
    ("step_downs", "sipshadow_step_downs_total", "Times this node stepped down from primary."),
    ("fences", "sipshadow_fences_total", "Times this node fenced itself."),
)  # fmt: skip

SHADOW: tuple[Scalar, ...] = (
    ("synced", "sipshadow_shadow_synced", "1 if the shadow holds a snapshot and follows the log, else 0."),
    ("applied", "sipshadow_shadow_applied_seq", "Sequence number of the last log entry applied to the replica."),
    ("released", "sipshadow_shadow_released_seq", "Sequence number of the last entry the primary said it released."),
    ("dialogs", "sipshadow_shadow_dialogs", "Dialogs the shadow's replica holds."),
    ("pending_entries", "sipshadow_shadow_pending_entries", "Log entries received, waiting for their datagram."),
    ("snapshots", "sipshadow_shadow_snapshots_total", "State snapshots the shadow received."),
    ("entries_applied", "sipshadow_shadow_entries_applied_total", "Log entries the shadow applied."),
    ("refused_frames", "sipshadow_shadow_refused_frames_total",
     "Frames from the primary that failed authentication or decoding."),
    ("divergences", "sipshadow_shadow_divergences_total", "Log entries that did not replay (the replica resyncs)."),
    ("connects", "sipshadow_shadow_connects_total", "Connections the shadow made to the primary."),
    ("payload_requests", "sipshadow_shadow_payload_requests_total", "Datagrams the shadow asked the primary for."),
    ("payloads_received", "sipshadow_shadow_payloads_received_total", "Datagrams the primary sent the shadow."),
)  # fmt: skip

TAP: tuple[Scalar, ...] = (
    ("buffered", "sipshadow_tap_buffered", "Tapped datagrams held, waiting for a log entry to claim them."),
    ("received", "sipshadow_tap_received_total", "Datagrams the shadow tapped."),
    ("matched", "sipshadow_tap_matched_total", "Tapped datagrams claimed by a log entry."),
    ("pruned", "sipshadow_tap_pruned_total", "Tapped datagrams dropped past the tap horizon, unclaimed."),
)  # fmt: skip

RECORDS: tuple[Scalar, ...] = (
    ("submitted", "sipshadow_records_submitted_total", "Call records released to the journal."),
    ("written", "sipshadow_records_written_total", "Call records new in the store."),
    ("duplicates", "sipshadow_records_duplicates_total", "Call records the store had already (absorbed)."),
    ("write_failures", "sipshadow_records_write_failures_total", "Store transactions that failed (retried)."),
    ("journal_errors", "sipshadow_records_journal_errors_total", "Journal appends that failed (records in memory)."),
    ("corrupt", "sipshadow_records_corrupt_total", "Journal lines that did not decode (cut short by a crash)."),
    ("lost", "sipshadow_records_lost_total", "Call records dropped: journal unwritable, memory bound reached."),
    ("pending_bytes", "sipshadow_records_pending_bytes", "Journal bytes the store has not taken yet."),
    ("held_in_memory", "sipshadow_records_held_in_memory", "Call records waiting for the journal to take writes."),
)  # fmt: skip

Family = CounterMetricFamily | GaugeMetricFamily


def _family(name: str, help_text: str, labels: Sequence[str] = ()) -> Family:
    """A counter when the name ends in `_total` (the convention), else a gauge."""
    if name.endswith("_total"):
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _one(name: str, help_text: str, value: float) -> Family:
    family = _family(name, help_text)
    family.add_metric([], value)
    return family


def _by(name: str, help_text: str, label: str, values: Mapping[Any, int | float]) -> Family:
    """One sample per key of `values`, the key as the label's value."""
    family = _family(name, help_text, [label])
    for key, value in sorted(values.items(), key=lambda item: str(item[0])):
        family.add_metric([str(key)], float(value))
    return family


def _table(source: object, table: Iterable[Scalar]) -> Iterator[Family]:
    """A family per field of `source` that is not None."""
    for field, name, help_text in table:
        value = getattr(source, field)
        if value is not None:
            yield _one(name, help_text, float(value))


def _members(members: Sequence[MemberStatus]) -> Iterator[Family]:
    for field, name, help_text in MEMBER:
        family = _family(name, help_text, ["member"])
        for member in members:
            family.add_metric([member.address], float(getattr(member, field)))
        yield family


def _core(counters: Counters) -> Iterator[Family]:
    yield _by("sipshadow_requests_total", "Requests that parsed, by method (others as 'other').", "method",
              counters.requests_by_method)  # fmt: skip
    yield _by("sipshadow_responses_total", "Responses that parsed, by status class.", "class",
              counters.responses_by_class)  # fmt: skip
    yield _by("sipshadow_rejections_total", "Requests the ALG answered itself with an error, by status.", "status",
              counters.rejected)  # fmt: skip
    yield _by("sipshadow_malformed_total", "Messages that did not parse, dropped, by kind.", "kind",
              {"request": counters.malformed_requests, "response": counters.malformed_responses})  # fmt: skip
    yield _by("sipshadow_dialogs_reaped_total", "Dialogs removed by their timer, by state.", "state",
              {"early": counters.dialogs_reaped_early, "confirmed": counters.dialogs_reaped_confirmed})  # fmt: skip
    yield from _table(counters, CORE)


def _role(ha: HaStatus | None) -> Family:
    current = ha.role if ha is not None else "solo"
    return _by("sipshadow_role", "1 for the node's current role, 0 for the others.", "role",
               {role: role == current for role in ROLES})  # fmt: skip


def _shadow(shadow: FollowerStatus | None, tap: TapStatus | None) -> Iterator[Family]:
    if shadow is not None:
        yield from _table(shadow, SHADOW)
    if tap is not None:
        yield from _table(tap, TAP)


def _ha(ha: HaStatus) -> Iterator[Family]:
    yield from _table(ha, HA)
    completed = sum(1 for record in ha.takeovers if record.aborted is None)
    yield _one("sipshadow_takeovers_total", "Takeovers this node completed.", completed)
    yield _by("sipshadow_link_refused_total", "Frames refused on the pair's links, by reason.", "reason",
              ha.link_refused)  # fmt: skip
    yield _one("sipshadow_alarms", "Misconfigurations seen on the pair's links (key, node, version).", len(ha.alarms))
    yield from _shadow(ha.shadow, ha.tap)


def families(document: StatusDocument) -> Iterator[Family]:
    """Every counter and gauge `document` holds a value for."""
    yield _by("sipshadow_build_info", "The sipshadow version this node runs (always 1).", "version",
              {__version__: 1})  # fmt: skip
    yield from _table(document, NODE)
    if document.counters is not None:
        yield from _core(document.counters)
    if document.members:
        yield from _members(document.members)
    if document.tcp is not None:
        yield _by("sipshadow_tcp_events_total", "TCP connection events at the service address, by event.",
                  "event", document.tcp)  # fmt: skip
    if document.records is not None:
        yield from _table(document.records, RECORDS)
    replication = document.replication
    if replication is not None:
        yield from _table(replication, REPLICATION)
        yield _one("sipshadow_replication_last_snapshot_seconds",
                   "Time from the last shadow's hello until its snapshot was sent.",
                   replication.last_snapshot_ms / 1000)  # fmt: skip
    yield _role(document.ha)
    if document.ha is not None:
        yield from _ha(document.ha)


class StatusCollector:
    """A prometheus_client collector: one call of `status` per scrape."""

    def __init__(self, status: Callable[[], StatusDocument]) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        return list(families(self.status()))


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    head += "Connection: close\r\n\r\n"
    return head.encode("ascii") + body


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request head, or None when it is oversized, too slow or cut short."""
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    return head if len(head) <= MAX_HEAD_BYTES else None


class Metrics:
    """The node's metrics registry and its /metrics endpoint."""

    def __init__(self, status: Callable[[], StatusDocument]) -> None:
        self.registry = CollectorRegistry()  # never the global one: two nodes in one process stay apart
        self.registry.register(StatusCollector(status))
        ProcessCollector(registry=self.registry)
        self._takeover = Histogram("sipshadow_takeover_seconds", "Takeover duration, from the verdict to serving.",
                                   buckets=TAKEOVER_BUCKETS, registry=self.registry)  # fmt: skip
        self._commit_delay = Histogram(
            "sipshadow_output_commit_delay_seconds", "Output commit delay: log entry recorded to the shadow's ack.",
            buckets=COMMIT_DELAY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._heartbeat_rtt = Histogram("sipshadow_heartbeat_rtt_seconds", "Heartbeat round trip to the peer.",
                                        buckets=HEARTBEAT_RTT_BUCKETS, registry=self.registry)  # fmt: skip
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def observe_takeover(self, seconds: float) -> None:
        self._takeover.observe(seconds)

    def observe_commit_delay(self, seconds: float) -> None:
        self._commit_delay.observe(seconds)

    def observe_heartbeat_rtt(self, seconds: float) -> None:
        self._heartbeat_rtt.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (`CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)

    async def start(self, listen: tuple[str, int]) -> None:
        """Serve GET /metrics at `listen` (port 0: any free port, see `address`) on the running loop."""
        self._server = await asyncio.start_server(self._serve, listen[0], listen[1], limit=MAX_HEAD_BYTES)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop listening and close the connections still open."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection; a slow or oversized one is closed unanswered."""
        self._writers.add(writer)
        try:
            head = await _read_head(reader)
            if head is not None:
                writer.write(self._answer(head))
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # a client that does not take its answer: closed below
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or parts[1].split(b"?", 1)[0] != b"/metrics":
            return _response("404 Not Found", "text/plain; charset=utf-8", b"not found\n")
        try:
            body = self.exposition()
        except Exception:
            log.exception("building the metrics failed")
            return _response("500 Internal Server Error", "text/plain; charset=utf-8", b"internal error\n")
        return _response("200 OK", CONTENT_TYPE_LATEST, body)
