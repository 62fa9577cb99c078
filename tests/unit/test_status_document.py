"""The status file is one typed schema: what a real node writes, `read_status` reads back.

A solo `Node` and an in-process `HaNode` pair on loopback (primary, synced shadow, then the
shadow's takeover) produce the documents; each goes through the file unchanged. The JSON
keys stay those operators and `jq` scripts already read, and a file with keys this reader
does not know (an older or newer node's) still reads.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipshadow.core import Gateway
from sipshadow.determinism import SystemEntropy
from sipshadow.lab.sipp import free_port
from sipshadow.runtime.config import NodeConfig, build, load_file
from sipshadow.runtime.ha import HaNode
from sipshadow.runtime.node import Node
from sipshadow.runtime.sender import COUNTERS as SEND_COUNTERS
from sipshadow.runtime.status import (
    NotAStatusDocument,
    StatusDocument,
    TakeoverRecord,
    TapStatus,
    encode,
    read_status,
    write_atomically,
)

HOST = "127.0.0.1"
#: A request the ALG answers itself (483): `counters.rejected` gets an (integer) key.
TOO_MANY_HOPS = (
    "OPTIONS sip:x@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:9;branch=z9hG4bKhops\r\nMax-Forwards: 0\r\n"
    "From: <sip:a@{host}>;tag=a\r\nTo: <sip:x@{host}>\r\nCall-ID: hops@{host}\r\nCSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)
NODE_KEYS = ["pid", "uptime_s", "service", "policy", "dialogs", "members", "counters", "internal_errors",
             "send_errors", *SEND_COUNTERS, "tcp_connections", "tcp"]  # fmt: skip
HA_KEYS = ["role", "epoch", "mode", "peer_alive", "heartbeats_refused", "detector_stalls", "gated_outputs",
           "takeovers", "input", "arbiter_peer_alive", "held_by_arbiter", "step_downs", "fences",
           "aborted_takeovers"]  # fmt: skip


def round_trip(document: StatusDocument, path: Path) -> dict[str, Any]:
    """Write, read back, compare; the file as plain JSON, for the layout checks."""
    write_atomically(path, document)
    assert read_status(path) == document
    raw: dict[str, Any] = json.loads(path.read_text())
    return raw


def poke(service: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(TOO_MANY_HOPS.format(host=service[0]).encode(), service)


async def until(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def pair_configs(tmp_path: Path) -> tuple[NodeConfig, NodeConfig]:
    service, members = f"{HOST}:{free_port()}", [f"{HOST}:{free_port()}"]
    links = {name: f"{HOST}:{free_port()}" for name in "ab"}
    key = secrets.token_hex(16)
    configs = []
    for name, role, peer in (("a", "primary", "b"), ("b", "shadow", "a")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'[health]\nprobe_interval_ms = 0\n[replication]\nkey = "{key}"\nmode = "active"\n'
                        f'listen = "{links[name]}"\nheartbeat_interval_ms = 20\nheartbeat_misses = 3\n')  # fmt: skip
        configs.append(build(load_file(path), listen=service, members=members, role=role, peer=links[peer]))
    return configs[0], configs[1]


def test_a_solo_nodes_document_round_trips_with_todays_keys(tmp_path: Path) -> None:
    async def scenario() -> StatusDocument:
        config = build(load_file(_empty(tmp_path)), listen=f"{HOST}:{free_port()}",
                       members=[f"{HOST}:{free_port()}", f"[::1]:{free_port()}"])  # fmt: skip
        node = Node(Gateway(config.gateway, SystemEntropy()))
        await node.start(config.listen)
        try:
            poke(config.listen)
            await until(lambda: node.status().counters.rejected)  # type: ignore[union-attr]
            return node.status()
        finally:
            node.close()

    document = asyncio.run(scenario())
    assert document.counters is not None and document.counters.rejected == {483: 1}
    raw = round_trip(document, tmp_path / "status.json")
    assert list(raw) == NODE_KEYS  # a solo node: no replication, no ha
    assert list(raw["members"][0]) == ["address", "up", "calls", "active_calls", "missed_probes", "weight", "transport",
                                       "draining", "retired"]
    assert raw["counters"]["rejected"] == {"483": 1}


def test_an_ha_pairs_documents_round_trip_before_and_after_a_takeover(tmp_path: Path) -> None:
    primary_config, shadow_config = pair_configs(tmp_path)

    async def scenario() -> tuple[StatusDocument, StatusDocument, StatusDocument]:
        primary, shadow = HaNode(primary_config), HaNode(shadow_config)
        try:
            await primary.start()
            await shadow.start()
            poke(primary_config.listen)
            # Synced (by TCP) and the primary heard (a shadow declares dead only a peer it heard).
            await until(lambda: (ha := shadow.status().ha) is not None and ha.shadow is not None
                        and ha.shadow.synced and ha.shadow.applied >= 1 and shadow.machine.peer_alive)  # fmt: skip
            serving, following = primary.status(), shadow.status()
            await primary.close()
            await until(lambda: shadow.role == "primary")
            return serving, following, shadow.status()
        finally:
            await shadow.close()
            await primary.close()

    serving, following, took_over = asyncio.run(scenario())

    raw = round_trip(serving, tmp_path / "primary.json")
    assert list(raw) == [*NODE_KEYS, "replication", "ha"]
    assert list(raw["ha"]) == HA_KEYS  # no tap, no shadow section on a primary
    assert serving.replication is not None and serving.replication.shadow_attached

    raw = round_trip(following, tmp_path / "shadow.json")
    assert list(raw) == ["ha"]  # a shadow serves nothing
    assert list(raw["ha"]) == [*HA_KEYS, "shadow"]
    assert following.ha is not None and following.ha.shadow is not None and following.ha.shadow.synced

    raw = round_trip(took_over, tmp_path / "took-over.json")
    assert list(raw) == [*NODE_KEYS, "replication", "ha"]
    assert took_over.ha is not None and took_over.ha.role == "primary"
    takeover = took_over.ha.takeovers[-1]
    assert takeover.aborted is None and takeover.ms is not None and takeover.entry is not None
    assert list(raw["ha"]["takeovers"][-1]) == [
        "epoch", "ms", "resent", "unlogged_processed", "stranded_entries", "dialogs", "entry", "network_ms",
        "verdict_at", "serving_at",
    ]  # fmt: skip


def test_sections_a_real_pair_on_loopback_does_not_write_round_trip_too(tmp_path: Path) -> None:
    """An aborted takeover and a tapping shadow's buffer (the tap needs the namespace bed)."""
    primary_config, _ = pair_configs(tmp_path)

    async def scenario() -> StatusDocument:
        node = HaNode(primary_config)
        try:
            await node.start()
            node.takeovers.append(TakeoverRecord(epoch=3, aborted="[Errno 98] Address already in use"))
            document = node.status()
        finally:
            await node.close()
        assert document.ha is not None
        document.ha.tap = TapStatus(buffered=2, received=10, matched=7, pruned=1)
        return document

    raw = round_trip(asyncio.run(scenario()), tmp_path / "status.json")
    assert raw["ha"]["takeovers"] == [{"epoch": 3, "aborted": "[Errno 98] Address already in use"}]
    assert list(raw["ha"])[-1] == "tap"


def test_keys_this_reader_does_not_know_are_ignored_at_every_level(tmp_path: Path) -> None:
    primary_config, _ = pair_configs(tmp_path)

    async def scenario() -> StatusDocument:
        node = HaNode(primary_config)
        try:
            await node.start()
            node.takeovers.append(TakeoverRecord(epoch=3, aborted="busy"))
            return node.status()
        finally:
            await node.close()

    document = asyncio.run(scenario())
    raw = json.loads(encode(document))
    for section in (raw, raw["members"][0], raw["counters"], raw["replication"], raw["ha"], raw["ha"]["takeovers"][0]):
        section["retired_counter"] = 7
        section["retired_section"] = {"nested": [1, 2]}
    path = tmp_path / "older.json"
    path.write_text(json.dumps(raw))
    assert read_status(path) == document


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('listen = "127.0.0.1:5060"\n', "malformed"),  # a config file, not JSON
        ("[1, 2]", "Expected `object`, got `array`"),
        ('{"ha": {"role": "shadow"}}', "missing required field"),
        ('{"pid": "one"}', "Expected `int | null`, got `str` - at `$.pid`"),
    ],
)
def test_a_file_that_is_not_a_status_document_gets_a_clear_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(NotAStatusDocument, match="not a sipshadow status document") as raised:
        read_status(path)
    assert str(path) in str(raised.value) and why in str(raised.value)
    assert isinstance(raised.value, ValueError)  # what the lab's pollers already catch
    with pytest.raises(OSError):
        read_status(tmp_path / "absent.json")


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "solo.toml"
    path.write_text("[health]\nprobe_interval_ms = 0\n")
    return path
