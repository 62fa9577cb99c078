"""The Prometheus exposition: status documents built by hand (a primary, a shadow, a solo node)
read back through prometheus_client's own parser, and the /metrics server on the running loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sipshadow import __version__
from sipshadow.core.counters import Counters
from sipshadow.records.writer import RecordsStatus
from sipshadow.runtime import metrics
from sipshadow.runtime.metrics import CORE, HA, MEMBER, RECORDS, REPLICATION, ROLES, SHADOW, TAP, Metrics, Scalar
from sipshadow.runtime.status import (
    FollowerStatus,
    HaStatus,
    MemberStatus,
    ReplicationStatus,
    StatusDocument,
    TakeoverRecord,
    TapStatus,
)

HOST = "127.0.0.1"
A, B = "10.0.0.1:5060", "10.0.0.2:5060"
Labels = frozenset[tuple[str, str]]


def core_counters() -> Counters:
    counters = Counters(calls=7, forged_responses=2, stray_responses=3, malformed_requests=4, malformed_responses=5)
    for method in ("INVITE", "INVITE", "BYE", "FOO"):
        counters.request(method)
    for status in (100, 180, 200, 200, 486):
        counters.response(status)
    counters.reject(483)
    counters.reject(483)
    counters.reject(503)
    return counters


def ha(role: str, **fields: object) -> HaStatus:
    base: dict[str, object] = dict(
        role=role, epoch=3, mode="active", peer_alive=True, heartbeats_refused=1, detector_stalls=0,
        gated_outputs=0, takeovers=[], input="forward", arbiter_peer_alive=False, held_by_arbiter=0,
        step_downs=0, fences=0, aborted_takeovers=0,
    )  # fmt: skip
    return HaStatus(**{**base, **fields})  # type: ignore[arg-type]


def primary() -> StatusDocument:
    takeovers = [TakeoverRecord(epoch=2, aborted="address in use"), TakeoverRecord(epoch=3, ms=41.0, dialogs=9)]
    return StatusDocument(
        pid=1, uptime_s=12.5, service="10.0.0.9:5060", policy="least-active-calls", dialogs=6,
        members=[MemberStatus(address=A, up=True, calls=5, active_calls=2),
                 MemberStatus(address=B, up=False, calls=2, active_calls=0, draining=True)],
        counters=core_counters(), internal_errors=1, send_errors=0, send_failures=2, tcp_connections=4,
        tcp={"accepted": 6, "closed": 2},
        replication=ReplicationStatus(seq=100, released=98, shadow_attached=True, lag_entries=2, lag_bytes=640,
                                      acks=97, last_snapshot_ms=12.0),
        ha=ha("primary", takeovers=takeovers, aborted_takeovers=1, link_refused={"replayed": 2}),
    )  # fmt: skip


def shadow() -> StatusDocument:
    follower = FollowerStatus(synced=True, applied=97, released=96, dialogs=5, divergences=1, entries_applied=90)
    tap = TapStatus(buffered=3, received=100, matched=96, pruned=1)
    return StatusDocument(ha=ha("shadow", epoch=2, shadow=follower, tap=tap, alarms=["key mismatch"]))


def solo() -> StatusDocument:
    return StatusDocument(uptime_s=1.0, dialogs=0, members=[MemberStatus(address=A, up=True)], counters=Counters())


def scrape(document: StatusDocument) -> dict[tuple[str, Labels], float]:
    """Every sample of the exposition, by name and labels."""
    text = Metrics(lambda: document).exposition().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: dict[tuple[str, Labels], float]) -> set[str]:
    return {name for name, _ in samples}


def exported(table: tuple[Scalar, ...]) -> set[str]:
    return {field for field, _, _ in table}


def bucket_bounds(samples: dict[tuple[str, Labels], float], name: str) -> list[float]:
    return sorted(float(dict(labels)["le"]) for sample, labels in samples if sample == name)


def test_a_primary_exposes_its_counters_members_replication_and_role() -> None:
    samples = scrape(primary())
    expected = {
        ("sipshadow_build_info", (("version", __version__),)): 1,
        ("sipshadow_uptime_seconds", ()): 12.5,
        ("sipshadow_dialogs", ()): 6,
        ("sipshadow_requests_total", (("method", "INVITE"),)): 2,
        ("sipshadow_requests_total", (("method", "BYE"),)): 1,
        ("sipshadow_requests_total", (("method", "other"),)): 1,
        ("sipshadow_responses_total", (("class", "1xx"),)): 2,
        ("sipshadow_responses_total", (("class", "2xx"),)): 2,
        ("sipshadow_responses_total", (("class", "4xx"),)): 1,
        ("sipshadow_calls_total", ()): 7,
        ("sipshadow_rejections_total", (("status", "483"),)): 2,
        ("sipshadow_rejections_total", (("status", "503"),)): 1,
        ("sipshadow_malformed_total", (("kind", "request"),)): 4,
        ("sipshadow_malformed_total", (("kind", "response"),)): 5,
        ("sipshadow_forged_responses_total", ()): 2,
        ("sipshadow_stray_responses_total", ()): 3,
        ("sipshadow_member_calls_total", (("member", A),)): 5,
        ("sipshadow_member_calls_total", (("member", B),)): 2,
        ("sipshadow_member_active_calls", (("member", A),)): 2,
        ("sipshadow_member_up", (("member", A),)): 1,
        ("sipshadow_member_up", (("member", B),)): 0,
        ("sipshadow_member_draining", (("member", A),)): 0,
        ("sipshadow_member_draining", (("member", B),)): 1,
        ("sipshadow_internal_errors_total", ()): 1,
        ("sipshadow_send_failures_total", ()): 2,
        ("sipshadow_tcp_connections", ()): 4,
        ("sipshadow_tcp_events_total", (("event", "accepted"),)): 6,
        ("sipshadow_replication_recorded_seq", ()): 100,
        ("sipshadow_replication_released_seq", ()): 98,
        ("sipshadow_replication_shadow_attached", ()): 1,
        ("sipshadow_replication_lag_entries", ()): 2,
        ("sipshadow_replication_lag_bytes", ()): 640,
        ("sipshadow_replication_acks_total", ()): 97,
        ("sipshadow_replication_last_snapshot_seconds", ()): 0.012,
        ("sipshadow_epoch", ()): 3,
        ("sipshadow_peer_alive", ()): 1,
        ("sipshadow_arbiter_peer_alive", ()): 0,
        ("sipshadow_takeovers_total", ()): 1,  # the aborted one is not a takeover
        ("sipshadow_aborted_takeovers_total", ()): 1,
        ("sipshadow_heartbeats_refused_total", ()): 1,
        ("sipshadow_link_refused_total", (("reason", "replayed"),)): 2,
        ("sipshadow_alarms", ()): 0,
    }
    for (name, labels), wanted in expected.items():
        assert value(samples, name, **dict(labels)) == pytest.approx(wanted), (name, labels)
    assert {labels: got for (name, labels), got in samples.items() if name == "sipshadow_role"} == {
        frozenset({("role", role)}): float(role == "primary") for role in ROLES
    }
    assert value(samples, "sipshadow_send_errors_total") == 0  # a zero the document holds is a sample
    assert not {name for name in names(samples) if name.startswith(("sipshadow_shadow_", "sipshadow_tap_"))}


def test_a_shadow_has_no_samples_for_what_it_does_not_hold() -> None:
    """A shadow serves nothing: no core counters, members, uptime or replication; zeros would lie."""
    samples = scrape(shadow())
    absent = ("sipshadow_requests_total", "sipshadow_calls_total", "sipshadow_uptime_seconds", "sipshadow_dialogs",
              "sipshadow_member_up", "sipshadow_replication_lag_entries", "sipshadow_tcp_connections",
              "sipshadow_internal_errors_total")  # fmt: skip
    assert not names(samples) & set(absent)
    assert value(samples, "sipshadow_role", role="shadow") == 1
    assert sum(got for (name, _), got in samples.items() if name == "sipshadow_role") == 1
    assert value(samples, "sipshadow_epoch") == 2
    assert value(samples, "sipshadow_shadow_synced") == 1
    assert value(samples, "sipshadow_shadow_applied_seq") == 97
    assert value(samples, "sipshadow_shadow_released_seq") == 96
    assert value(samples, "sipshadow_shadow_dialogs") == 5
    assert value(samples, "sipshadow_shadow_divergences_total") == 1
    assert value(samples, "sipshadow_shadow_entries_applied_total") == 90
    assert value(samples, "sipshadow_tap_buffered") == 3
    assert value(samples, "sipshadow_tap_pruned_total") == 1
    assert value(samples, "sipshadow_takeovers_total") == 0
    assert value(samples, "sipshadow_alarms") == 1


def test_a_solo_node_reports_role_solo_and_no_ha() -> None:
    samples = scrape(solo())
    roles = {dict(labels)["role"]: got for (name, labels), got in samples.items() if name == "sipshadow_role"}
    assert roles == {role: float(role == "solo") for role in ROLES}
    assert not names(samples) & {"sipshadow_epoch", "sipshadow_peer_alive", "sipshadow_takeovers_total"}
    assert not {name for name in names(samples) if name.startswith("sipshadow_replication_")}
    assert value(samples, "sipshadow_member_up", member=A) == 1
    assert value(samples, "sipshadow_requests_total", method="INVITE") is None  # none counted yet


def test_every_family_follows_the_naming_conventions_and_says_what_it_counts() -> None:
    text = Metrics(primary).exposition().decode()
    families = [family for family in text_string_to_metric_families(text) if family.name.startswith("sipshadow_")]
    assert len(families) > 60
    assert len({family.name for family in families}) == len(families)
    for family in families:
        assert re.fullmatch(r"sipshadow_[a-z_]+", family.name), family.name
        assert family.documentation and "\n" not in family.documentation, family.name
        if family.type == "counter":
            assert all(sample.name == family.name + "_total" for sample in family.samples), family.name
        else:
            assert family.type in ("gauge", "histogram"), family.name
            assert not family.name.endswith("_total"), family.name
    assert all(line.count(" ") >= 3 for line in text.splitlines() if line.startswith("# HELP sipshadow_"))


def test_every_field_of_the_document_is_exported_or_deliberately_not() -> None:
    """A field added to the status document (or the counters) needs a metric, or a reason here."""
    counted_apart = {"requests", "responses", "requests_by_method", "responses_by_class", "rejected",
                     "malformed_requests", "malformed_responses", "dialogs_reaped_early", "dialogs_reaped_confirmed",
                     "calls_per_member"}  # fmt: skip
    not_a_metric = {"address", "transport"}  # member labels and text
    assert {field.name for field in dataclasses.fields(Counters)} == exported(CORE) | counted_apart
    assert set(MemberStatus.__struct_fields__) == exported(MEMBER) | not_a_metric
    assert set(ReplicationStatus.__struct_fields__) == exported(REPLICATION) | {"last_snapshot_ms"}
    assert set(FollowerStatus.__struct_fields__) == exported(SHADOW) | {"gated_outputs"}  # in ha.gated_outputs
    assert set(TapStatus.__struct_fields__) == exported(TAP)
    assert set(RecordsStatus.__struct_fields__) == exported(RECORDS) | {"last_error"}  # text: the status file
    apart = {"role", "mode", "input", "takeovers", "tap", "shadow", "alarms", "link_refused"}
    assert set(HaStatus.__struct_fields__) == exported(HA) | apart


def test_the_histograms_count_their_observations_in_the_right_buckets() -> None:
    registry = Metrics(solo)
    registry.observe_takeover(0.030)
    registry.observe_takeover(3.0)
    registry.observe_commit_delay(0.0003)
    registry.observe_heartbeat_rtt(0.00008)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(registry.exposition().decode())
        for sample in family.samples
    }
    assert value(samples, "sipshadow_takeover_seconds_bucket", le="0.025") == 0
    assert value(samples, "sipshadow_takeover_seconds_bucket", le="0.05") == 1
    assert value(samples, "sipshadow_takeover_seconds_bucket", le="5.0") == 2
    assert value(samples, "sipshadow_takeover_seconds_count") == 2
    assert value(samples, "sipshadow_takeover_seconds_sum") == pytest.approx(3.03)
    assert value(samples, "sipshadow_output_commit_delay_seconds_bucket", le="0.00025") == 0
    assert value(samples, "sipshadow_output_commit_delay_seconds_bucket", le="0.0005") == 1
    assert value(samples, "sipshadow_heartbeat_rtt_seconds_bucket", le="0.0001") == 1
    assert bucket_bounds(samples, "sipshadow_takeover_seconds_bucket")[0] == 0.005
    assert bucket_bounds(samples, "sipshadow_takeover_seconds_bucket")[-2] == 5.0
    assert bucket_bounds(samples, "sipshadow_output_commit_delay_seconds_bucket")[0] == 0.0001
    assert bucket_bounds(samples, "sipshadow_output_commit_delay_seconds_bucket")[-2] == 0.5
    assert bucket_bounds(samples, "sipshadow_heartbeat_rtt_seconds_bucket")[-2] == 0.1


def test_status_is_read_once_per_scrape_into_an_own_registry() -> None:
    calls: list[int] = []

    def status() -> StatusDocument:
        calls.append(1)
        return primary()

    first, second = Metrics(status), Metrics(status)  # two nodes in one process: no clash
    assert calls == []  # registering reads nothing
    first.exposition()
    assert calls == [1]
    second.exposition()
    first.exposition()
    assert calls == [1, 1, 1]
    assert REGISTRY.get_sample_value("sipshadow_takeover_seconds_count") is None


# -- the HTTP server -----------------------------------------------------------------------


def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the server sent before it closed the connection (reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    except ConnectionResetError:
        return b""


def serve(test: Callable[[Metrics], Awaitable[None]], status: Callable[[], StatusDocument] = primary) -> None:
    async def run() -> None:
        served = Metrics(status)
        await served.start((HOST, 0))
        try:
            await test(served)
        finally:
            served.close()

    asyncio.run(run())


def test_the_server_answers_get_metrics_on_the_loop_and_404_otherwise() -> None:
    threads: list[int] = []

    def status() -> StatusDocument:
        asyncio.get_running_loop()  # raises off the loop's thread
        threads.append(threading.get_ident())
        return primary()

    async def check(served: Metrics) -> None:
        host, port = served.address
        assert host == HOST and port > 0
        loop = asyncio.get_running_loop()
        code, content_type, body = await loop.run_in_executor(None, fetch, f"http://{host}:{port}/metrics")
        assert (code, content_type) == (200, CONTENT_TYPE_LATEST)
        assert b'sipshadow_member_calls_total{member="10.0.0.1:5060"} 5.0' in body.splitlines()
        assert threads == [threading.get_ident()]
        for path in ("/", "/metrics/x", "/status"):
            code, _, _ = await loop.run_in_executor(None, fetch, f"http://{host}:{port}{path}")
            assert code == 404, path
        assert len(threads) == 1  # a 404 reads no status

    serve(check, status)


def test_a_raw_request_gets_one_answer_and_the_connection_closes() -> None:
    async def check(served: Metrics) -> None:
        reader, writer = await asyncio.open_connection(*served.address)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await closed_within(reader, 2.0)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close" in head
        assert f"Content-Length: {len(body)}".encode() in head
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")  # the connection is gone: nothing more
        writer.close()
        reader, writer = await asyncio.open_connection(*served.address)
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
        assert (await closed_within(reader, 2.0)).startswith(b"HTTP/1.1 404 ")
        writer.close()

    serve(check)


def test_an_oversized_request_head_is_closed_unanswered() -> None:
    """Over 8 KiB: closed, whether the head ends or not."""

    async def check(served: Metrics) -> None:
        reader, writer = await asyncio.open_connection(*served.address)
        writer.write(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 8192 + b"\r\n\r\n")
        assert await closed_within(reader, 2.0) == b""
        writer.close()
        reader, writer = await asyncio.open_connection(*served.address)  # and never finished, however long
        writer.write(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 16384)
        assert await closed_within(reader, 2.0) == b""
        writer.close()

    serve(check)


def test_a_slow_request_head_is_closed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "HEAD_TIMEOUT_S", 0.2)

    async def check(served: Metrics) -> None:
        reader, writer = await asyncio.open_connection(*served.address)
        started = time.monotonic()
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
        assert await closed_within(reader, 2.0) == b""
        assert 0.15 < time.monotonic() - started < 1.5
        writer.close()

    serve(check)


def test_close_stops_listening_and_drops_idle_connections() -> None:
    async def check(served: Metrics) -> None:
        address = served.address
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"GET /met")
        await asyncio.sleep(0.05)
        served.close()
        assert await closed_within(reader, 1.0) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection(*address)

    serve(check)


def test_a_status_that_raises_answers_500_and_the_server_keeps_serving() -> None:
    documents = [primary()]

    def status() -> StatusDocument:
        if not documents:
            raise RuntimeError("boom")
        return documents[0]

    async def check(served: Metrics) -> None:
        loop = asyncio.get_running_loop()
        url = "http://{}:{}/metrics".format(*served.address)
        documents.clear()
        assert (await loop.run_in_executor(None, fetch, url))[0] == 500
        documents.append(msgspec.structs.replace(primary(), dialogs=11))
        code, _, body = await loop.run_in_executor(None, fetch, url)
        assert code == 200 and b"sipshadow_dialogs 11.0" in body

    serve(check, status)
