"""Attacks on the pair's links (replay, re-injection, floods, idle sockets, a wrong key), black box on loopback.

Each test mounts one attack on a real loopback pair and asserts the safe behaviour. They are
written against the link as it should be (authenticated, replay-proof, bounded), so on a link
that trusts any frame carrying the pair's MAC they fail, and the failure message measures
the attack's effect. The man in the middle is `tests/integration/mitm.py`: a node's `peer` is
pointed at a relay in front of the other node, so the test sees (and can replay) real frames.
Only the status documents, the logs and the bytes on the wire are looked at.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.pair import LoopbackPair
from sipshadow.lab.sipp import SippResult, SippUac, SippUas, free_port
from sipshadow.runtime.status import FollowerStatus
from tests.integration.mitm import (
    DOWNSTREAM,
    UPSTREAM,
    DatagramReplay,
    Relay,
    abort,
    split_frames,
    whole_frames,
)

pytestmark = pytest.mark.sipp

Address = tuple[str, int]
MiB = 1024 * 1024

#: A replayed Hello may get a handshake back (a challenge), never a snapshot: up to this many bytes.
HANDSHAKE_BYTES = 200
#: Unauthenticated connections the primary may still hold 5 s after they opened (an assumed cap).
PENDING_CAP = 16

try:  # the header's version byte, as the node speaks it (the attacker knows the protocol)
    from sipshadow.link import VERSION as LINK_VERSION
except Exception:  # the link layer being rewritten: the version the pair spoke so far
    LINK_VERSION = 1
HELLO_KIND = 1


class LinkPair(LoopbackPair):
    """A `LoopbackPair` whose nodes may differ: where a node sends its link traffic (`repoint`),
    its key (`set_key`), its service address (`services`) and what starting it waits for (`ready`)."""

    def __init__(self, workdir: Path, members: Sequence[SippUas], **settings: Any) -> None:
        super().__init__(("127.0.0.1", free_port()), [m.address for m in members], workdir, **settings)
        self.services: dict[str, Address] = {"a": self.service, "b": self.service}
        self.ready: dict[str, str] = {}
        self._free_replication_ports()

    def _free_replication_ports(self) -> None:
        """Replication ports free for TCP too, not only for UDP (a node listens on both)."""
        ports = {"a": free_port(), "b": free_port()}
        while ports["b"] == ports["a"]:
            ports["b"] = free_port()
        for name, peer in (("a", "b"), ("b", "a")):
            self._set(name, "listen", f'"127.0.0.1:{ports[name]}"')
            self._set(name, "peer", f'"127.0.0.1:{ports[peer]}"')
        self.replication_ports = ports

    def replication_address(self, name: str) -> Address:
        return ("127.0.0.1", self.replication_ports[name])

    def _set(self, name: str, setting: str, value: str) -> None:
        config, count = re.subn(rf"^{setting} = .*$", f"{setting} = {value}", self.configs[name], flags=re.M)
        assert count == 1, f"no `{setting}` line in node {name}'s config"
        self.configs[name] = config

    def repoint(self, name: str, port: int) -> None:
        """Node `name` sends its beats and connects its link to `port` instead of its peer.

        Its node id, by default the text of its own replication address, is written out: a node
        without one may expect its peer's id to be the text of its `peer`, the relay's here."""
        self._set(name, "peer", f'"127.0.0.1:{port}"')
        self.configs[name] += f'node_id = "127.0.0.1:{self.replication_ports[name]}"\n'  # [replication] is last

    def set_key(self, name: str, key: str) -> None:
        self._set(name, "key", f'"{key}"')

    def start(self) -> LinkPair:
        """Start both nodes. A service port another process took between its pick and its bind
        (the picks are ephemeral ports, released before use) is picked again, twice at most."""
        for attempt in range(3):
            try:
                super().start()
                return self
            except RuntimeError as error:
                logs = [log.read_text(errors="replace") for log in self.workdir.glob(f"node-*-{self.restarts}/alg.log")]
                self.stop()
                if attempt == 2 or not any("Address already in use" in text for text in [str(error), *logs]):
                    raise
                taken, self.service = self.service, ("127.0.0.1", free_port())
                self.services = {name: self.service if address == taken else address
                                 for name, address in self.services.items()}  # fmt: skip
                self.restarts += 1
        raise AssertionError("unreachable")

    def _process(self, name: str, ready: str) -> AlgProcess:
        workdir = self.workdir / f"node-{name}-{self.restarts}"
        return AlgProcess(self.services[name], self.members, workdir, config_text=self.configs[name],
                          ready=self.ready.get(name, ready))  # fmt: skip

    def rejoin(self, name: str, within_s: float) -> float:
        """Start a killed node again; seconds until it is a synced shadow (inf if not within_s)."""
        self.restarts += 1
        started = time.monotonic()
        self.nodes[name] = self._process(name, "none").start()
        synced = wait_until(lambda: shadow_of(self, name) is not None and shadow_of(self, name).synced, within_s)
        return (time.monotonic() - started) if synced else float("inf")


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Everything a test starts (pairs, relays, UACs, sockets, stopped processes) is undone here."""
    with contextlib.ExitStack() as exits:
        yield exits


# -- helpers ------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if condition():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


def holds(condition: Callable[[], bool]) -> bool:
    """`condition` now (False while a status file cannot be read yet)."""
    return wait_until(condition, 0.0)


def shadow_of(pair: LoopbackPair, name: str) -> FollowerStatus | None:
    """The node's follower status (None when it follows nothing)."""
    ha = pair.status(name).ha
    return ha.shadow if ha is not None else None


def started_pair(stack: contextlib.ExitStack, pair: LinkPair) -> LinkPair:
    """`pair`, started now and stopped at teardown."""
    stack.enter_context(pair)
    return pair


def long_calls(stack: contextlib.ExitStack, pair: LoopbackPair, run_dir: Path, calls: int) -> SippUac:
    """`calls` calls of 20 s through the pair's service address, started now, stopped at teardown."""
    uac = SippUac(pair.service, run_dir, calls=calls, rate=30, timeout=40, recv_timeout=5.0,
                  extra_args=["-d", "20000"])  # fmt: skip
    stack.callback(uac.stop)
    return uac.start()


def read_for(sock: socket.socket, seconds: float) -> bytes:
    """What `sock` receives within `seconds`, until the peer closes it."""
    received = bytearray()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            break
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        received += data
    return bytes(received)


def open_connections(stack: contextlib.ExitStack, target: Address, count: int) -> list[socket.socket]:
    """`count` TCP connections to `target`, held until teardown (a refused one is left out)."""
    opened: list[socket.socket] = []
    for _ in range(count):
        try:
            sock = socket.create_connection(target, timeout=2.0)
        except OSError:
            continue
        stack.callback(abort, sock)
        opened.append(sock)
    return opened


def still_open(sockets: list[socket.socket], within_s: float) -> list[socket.socket]:
    """Watch `sockets` until all are closed or `within_s` is up; those still open. Closed means
    the server ended it: recv gives b"" or an error. Bytes it sends are read and dropped."""
    waiting = list(sockets)
    deadline = time.monotonic() + within_s
    while waiting and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(waiting, [], [], min(left, 0.1))
        for sock in readable:
            try:
                if sock.recv(4096):
                    continue
            except OSError:
                pass
            waiting.remove(sock)
    return waiting


def warnings_in(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]  # fmt: skip


# -- the attacks --------------------------------------------------------------------------


def test_replayed_primary_heartbeat_does_not_hold_the_shadow(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = LinkPair(tmp_path, members)
    relay = stack.enter_context(Relay(pair.replication_address("b")))
    pair.repoint("a", relay.port)  # a's beats to b pass the relay
    started_pair(stack, pair)
    time.sleep(0.3)
    beats = relay.datagrams_from_clients()
    assert beats, "harness: the relay saw none of a's beats"
    beat = beats[-1].data  # the last beat a sent, as primary; b has seen it already
    killed_at = pair.kill("a")
    with DatagramReplay(beat, pair.replication_address("b"), interval_s=0.02, duration_s=3.0) as replay:
        took_over = wait_until(lambda: pair.role_of("b") == "primary", 4.5)
        held_s = time.monotonic() - killed_at
    assert took_over, "b did not take over even 4.5 s after the kill"
    assert held_s < 1.0, (
        f"one replayed beat of the dead primary ({len(beat)} bytes, sent {replay.sent} times) held the shadow "
        f"for {held_s:.2f} s after the kill"
    )


def test_replayed_hello_does_not_attach_an_attacker(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = LinkPair(tmp_path, members)
    relay = stack.enter_context(Relay(pair.replication_address("a")))
    pair.repoint("b", relay.port)  # b's link to a passes the relay
    started_pair(stack, pair)
    handshake = relay.connections[0].sent(UPSTREAM)  # b's first bytes: its Hello (and first ack)
    assert handshake, "harness: the relay saw nothing from b"
    long_calls(stack, pair, tmp_path, calls=5)
    assert wait_until(lambda: (pair.status("a").dialogs or 0) >= 5, 10.0), "harness: the calls did not come up"
    connects = shadow_of(pair, "b").connects

    intruder = open_connections(stack, pair.replication_address("a"), 1)[0]
    intruder.sendall(handshake)
    leaked = read_for(intruder, 1.0)
    abort(intruder)
    time.sleep(1.0)
    attached = pair.status("a").replication.shadow_attached
    shadow = shadow_of(pair, "b")

    assert len(leaked) < HANDSHAKE_BYTES, (
        f"a replay of b's {len(handshake)}-byte hello ({len(split_frames(handshake))} frames) got "
        f"{len(leaked)} bytes back ({len(split_frames(leaked))} frames): the state of 5 live calls leaked"
    )
    assert shadow.connects == connects, (
        f"the replayed hello threw the real shadow off: it had to reconnect {shadow.connects - connects} times"
    )
    assert attached and shadow.synced, (attached, shadow)


def test_reinjected_snapshot_does_not_roll_the_shadow_back(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    calls = 30
    # no health probes: no log entry flows while the calls sit idle (an entry would expose the
    # rollback as a divergence and repair it by state transfer within a probe interval)
    pair = LinkPair(tmp_path, members, probe_interval_ms=0)
    relay = stack.enter_context(Relay(pair.replication_address("a")))
    pair.repoint("b", relay.port)
    started_pair(stack, pair)
    time.sleep(0.2)
    snapshot = whole_frames(relay.live_connection().sent(DOWNSTREAM))  # a's answer at connect: 0 calls
    assert snapshot, "harness: the relay saw nothing from a"
    uac = long_calls(stack, pair, tmp_path, calls=calls)
    up = wait_until(lambda: shadow_of(pair, "b").dialogs >= calls and (pair.status("a").dialogs or 0) >= calls, 10.0)
    assert up, f"harness: {calls} calls did not come up ({pair.status('a').dialogs}, {shadow_of(pair, 'b')})"

    relay.live_connection().inject(DOWNSTREAM, snapshot)
    readings: list[tuple[int, int]] = []  # (a's dialogs, b's replica's dialogs)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        readings.append((pair.status("a").dialogs or 0, shadow_of(pair, "b").dialogs))
        time.sleep(0.02)
    pair.kill("a")
    pair.wait_for_primary("b", timeout_s=2.0)
    taken_over = pair.status("b").ha.takeovers[0].dialogs
    result: SippResult = uac.wait()

    behind = [(held, replica) for held, replica in readings if replica < held]
    assert not behind, (
        f"the re-injected {len(snapshot)}-byte snapshot rolled the shadow back to {min(r for _, r in behind)} "
        f"dialogs while a held {max(h for h, _ in behind)} ({len(behind)} of {len(readings)} readings); "
        f"after the kill b took over {taken_over} dialogs and {result.failed_calls} of {calls} calls failed"
    )
    assert result.failed_calls == 0 and result.successful_calls == calls, (taken_over, result.summary())


def test_oversized_frame_does_not_stall_the_primary(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = started_pair(stack, LinkPair(tmp_path, members))
    primary = psutil.Process(pair.nodes["a"].pid)
    baseline = primary.memory_info().rss
    announced = 32 * MiB
    header = struct.pack("!2sBBI", b"SS", LINK_VERSION, HELLO_KIND, announced)
    junk = memoryview(b"\xa5" * announced)

    def flood(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a hardened node closes on the header
            sock.sendall(header)
            sock.sendall(junk)

    floods = []
    for sock in open_connections(stack, pair.replication_address("a"), 3):
        sock.settimeout(5.0)
        floods.append(threading.Thread(target=flood, args=(sock,), daemon=True))
    for thread in floods:
        thread.start()
    peak, wrong_roles = baseline, []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        peak = max(peak, primary.memory_info().rss)
        roles = (pair.role_of("a"), pair.role_of("b"))
        if roles != ("primary", "shadow"):
            wrong_roles.append(roles)
        time.sleep(0.02)
    for thread in floods:
        thread.join(timeout=6.0)

    assert len(floods) == 3, "harness: could not connect to a"
    assert not wrong_roles and not pair.status("b").ha.takeovers, (wrong_roles[:3], pair.status("b").ha.takeovers)
    growth = peak - baseline
    assert growth < 64 * MiB, (
        f"three frames announcing {announced // MiB} MiB each grew a's RSS by {growth / MiB:.0f} MiB "
        f"({baseline / MiB:.0f} -> {peak / MiB:.0f} MiB)"
    )


def test_slow_and_idle_connections_are_closed_and_capped(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = started_pair(stack, LinkPair(tmp_path, members))
    target = pair.replication_address("a")
    idle = open_connections(stack, target, 200)
    dribbler = open_connections(stack, target, 1)[0]
    stop_dribbling = threading.Event()
    stack.callback(stop_dribbling.set)

    def dribble() -> None:  # a frame header, one byte a second
        for byte in struct.pack("!2sBBI", b"SS", LINK_VERSION, HELLO_KIND, 64):
            try:
                dribbler.send(bytes([byte]))
            except OSError:
                return
            if stop_dribbling.wait(1.0):
                return

    threading.Thread(target=dribble, daemon=True).start()
    left_open = still_open([*idle, dribbler], within_s=5.0)
    stop_dribbling.set()

    assert len(idle) == 200, f"harness: only {len(idle)} of 200 connections opened"
    assert len(left_open) <= PENDING_CAP and dribbler not in left_open, (
        f"{len(left_open)} of {len(idle) + 1} idle or slow connections were still open 5 s after they opened "
        f"(the dribbler {'among them' if dribbler in left_open else 'closed'})"
    )
    for sock in [*idle, dribbler]:
        abort(sock)

    held = open_connections(stack, target, 200)
    pair.kill("b")
    rejoined_s = pair.rejoin("b", within_s=5.0)
    assert rejoined_s <= 5.0, f"with {len(held)} connections held open, the restarted shadow did not sync in 5 s"


def test_both_primaries_alive_the_lower_epoch_steps_down(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    # b gets its own service address, as if each node held the VIP on its own host: on one shared
    # port b's takeover would only be refused (address in use) while a stands still. The cores
    # then differ in their own address, so health probes (whose answers name it) would not replay
    # from one node's log on the other's replica: probing is off.
    pair = LinkPair(tmp_path, members, probe_interval_ms=0)
    pair.services["b"] = ("127.0.0.1", free_port())
    started_pair(stack, pair)
    pid = pair.nodes["a"].pid
    os.kill(pid, signal.SIGSTOP)
    stack.callback(lambda: os.kill(pid, signal.SIGCONT) if psutil.pid_exists(pid) else None)
    time.sleep(1.0)
    os.kill(pid, signal.SIGCONT)
    took_over = wait_until(lambda: any(not record.aborted for record in pair.status("b").ha.takeovers), 0.5)
    assert took_over, f"b did not take over while a stood still for 1 s ({pair.status('b').ha})"

    def settled() -> bool:
        a, b = pair.status("a").ha, pair.status("b").ha
        return (a.role, b.role) == ("shadow", "primary") and a.shadow is not None and a.shadow.synced

    stable = 0
    deadline = time.monotonic() + 3.0
    while stable < 5 and time.monotonic() < deadline:  # five readings in a row, 0.1 s apart
        stable = stable + 1 if holds(settled) else 0
        time.sleep(0.1)
    a, b = pair.status("a").ha, pair.status("b").ha
    assert stable >= 5, f"3 s after SIGCONT: a {a.role} (epoch {a.epoch}), b {b.role} (epoch {b.epoch}); {a.shadow}"


def test_wrong_key_is_one_clear_line_and_an_alarm(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = LinkPair(tmp_path, members)
    pair.set_key("b", "0123456789abcdef" * 2)  # not the pair's key
    pair.ready["b"] = "none"  # it can never sync
    started_pair(stack, pair)
    started_at = time.monotonic()
    b = pair.nodes["b"]
    assert wait_until(b.status_file.exists, 5.0), "harness: b wrote no status file"
    time.sleep(max(0.0, started_at + 5.0 - time.monotonic()))

    warnings = warnings_in(b.log_file)
    document = json.loads(b.status_file.read_text())
    alarms = (document.get("ha") or {}).get("alarms")
    assert len(warnings) <= 5, (
        f"b logged {len(warnings)} warnings in 5 s with the wrong key (~{len(warnings) / 5:.0f}/s), e.g. "
        f"{warnings[-1] if warnings else ''!r}"
    )
    assert any("key" in line.lower() for line in warnings), f"no warning says the key is wrong: {warnings}"
    assert alarms, f"b's status raises no alarm (ha.alarms = {alarms!r})"
