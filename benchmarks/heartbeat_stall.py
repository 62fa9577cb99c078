"""What the peer hears while a node is busy, holds the interpreter lock, or stalls: JSON out.

Node A runs in a child process with its own asyncio loop and two beat senders side by side:

  process   A's real `HeartbeatDetector`: beats leave from its beat child process (`detect.beater`),
            which stops only when A's loop has not turned for `beater.STALL_LIMIT_S`;
  thread    the old design, minus crypto: a thread in A's interpreter sends a small datagram
            every interval while A's loop turned within `OLD_LOOP_STALL_LIMIT_S`.

B, the observer, runs in this process: a `HeartbeatDetector` peered with A and a plain UDP
socket for the thread's datagrams, both noting when each beat arrives (`time.monotonic`, the
host's clock, which A also uses for the scenario windows it reports). Once B hears A's sealed
beats and both have run for `BASELINE_S`, A's loop thread runs, with pauses between them:

  snapshot  a state-transfer snapshot of 65 000 dialogs: `Recorder.attach()` and every part
            (`take_frames`), encoded (`replication.wire.CODEC`) and sealed (`link.session.Session`),
            back to back (the primary spreads the parts over its turns);
  gil       one long C call: `msgspec.msgpack.decode` of a blob sized for ~300 ms (a hold that
            the host's load pushed out of 200-450 ms is reported as `gil_rejected_N` and retried);
  stall     `time.sleep(1.0)`: the loop stands still (a wedged node), the lock is free.

For each scenario and sender: the longest silence between arrivals at B that overlaps the
scenario, whether it exceeds the pair's default detection window (10 ms x 4 misses = 40 ms,
widened at most to 60 ms), whether B's detector declared A dead, and for the process sender
the silences A's `on_stall` heard. Each scenario also says how long it took and the longest
garbage collection in it (a collection holds the interpreter lock like any long C call).

.venv/bin/python benchmarks/heartbeat_stall.py
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import multiprocessing
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from harness import log, machine
from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived
from sipshadow.core.dialogs import call_hash
from sipshadow.detect.beater import STALL_LIMIT_S
from sipshadow.detect.heartbeat import MAX_WIDENING, Heartbeat, HeartbeatDetector
from sipshadow.determinism import RecordingEntropy, SystemEntropy
from sipshadow.lab.sipp import free_port
from sipshadow.link import Peering
from sipshadow.link.session import Session
from sipshadow.replication.recorder import Recorder
from sipshadow.replication.wire import CODEC
from sipshadow.runtime.primary_link import collection_paused

KEY = b"k" * 32
HOST = "127.0.0.1"
INTERVAL_S = 0.010
MISSES = 4
BASE_WINDOW_S = INTERVAL_S * MISSES
CAP_WINDOW_S = MAX_WIDENING * BASE_WINDOW_S
#: The old beat thread's rule: beat while the loop turned within this long (s).
OLD_LOOP_STALL_LIMIT_S = 2.0
DIALOGS = 65_000
GIL_TARGET_S = 0.300
#: A hold outside this (s) is retried with a resized blob, at most `GIL_ATTEMPTS` times in all:
#: on a loaded host the same decode may take twice as long, past the beat child's stall limit.
GIL_ACCEPTED_S = (0.200, 0.450)
GIL_ATTEMPTS = 3
STALL_S = 1.0
BASELINE_S = 1.0
PAUSE_S = 1.0
#: The whole run must end well within a minute; the session must come up within this (s).
SESSION_TIMEOUT_S = 15.0
REPORT_TIMEOUT_S = 40.0
THREAD_BEAT = struct.Struct("!Qd")  # sequence, sent at (the sender's time.monotonic())

# -- A's workload, prepared before any beat is measured ----------------------------------------

SERVICE, CALLER = (HOST, 5060), (HOST, 5061)
MEMBERS = ((HOST, 5070), (HOST, 5071))
INVITE = (
    "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller1\r\nTo: service <sip:service@127.0.0.1:5060>\r\n"
    "Call-ID: template@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.1:5061\r\n"
    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def answer(forwarded: bytes) -> bytes:
    """The member's 200 OK to the INVITE the gateway forwarded (its Vias, tags, Record-Route)."""
    head = forwarded.split(b"\r\n\r\n", 1)[0].decode()
    kept = [
        line + (";tag=callee1" if line.startswith("To:") else "")
        for line in head.split("\r\n")[1:]
        if line.split(":", 1)[0] in ("Via", "From", "To", "Call-ID", "CSeq", "Record-Route")
    ]
    return "\r\n".join(["SIP/2.0 200 OK", *kept, "Contact: <sip:127.0.0.1:5070>", "Content-Length: 0", "", ""]).encode()


def loaded_gateway(dialogs: int) -> tuple[Gateway, RecordingEntropy]:
    """A gateway holding `dialogs` confirmed calls: one real INVITE/200 exchange, its row copied
    under distinct Call-IDs and imported (a joining shadow's restore), hashes recomputed so the
    digest checks out."""
    config = GatewayConfig(SERVICE, tuple(MemberSpec(member) for member in MEMBERS), probe_interval_s=0)
    entropy = RecordingEntropy(SystemEntropy(1))
    gateway = Gateway(config, entropy)
    (forwarded,) = gateway.handle(MessageReceived(INVITE.encode(), CALLER, 0.0))
    gateway.handle(MessageReceived(answer(forwarded.data), forwarded.destination, 0.0))
    entropy.take()
    state = gateway.export_state()
    (row,) = state.pop("dialogs")
    state.pop("dialogs_digest")
    rows = [(f"call-{n}@127.0.0.1", *row[1:-1], 0) for n in range(dialogs)]
    gateway.import_state({**state, "dialogs": rows})  # no digest: the copies' hashes are not known yet
    calls = gateway.table.calls
    rows = [(*row[:-1], call_hash(calls[row[0]])) for row in rows]
    digest = 0
    for hashed in rows:
        digest ^= hashed[-1]
    gateway.import_state({**state, "dialogs": rows, "dialogs_digest": digest})
    return gateway, entropy


def gil_blob(target_s: float) -> tuple[bytes, int]:
    """A msgpack array of small ints whose decode takes about `target_s` here: resized from
    the best of two decodes until one lands within 15 % (page faults grow with the list)."""
    items = 2_000_000
    for _ in range(5):
        blob = msgspec.msgpack.encode([1] * items)
        best = min(timed_decode(blob) for _ in range(2))
        if abs(best - target_s) < 0.15 * target_s:
            return blob, items
        items = int(items * target_s / best)
    return msgspec.msgpack.encode([1] * items), items  # the host is too noisy to do better


def timed_decode(blob: bytes) -> float:
    started = time.perf_counter()
    decoded = msgspec.msgpack.decode(blob)
    elapsed = time.perf_counter() - started
    del decoded
    return elapsed


# -- node A (child process) --------------------------------------------------------------------


class NodeA:
    """A's loop, its real detector, the old-style beat thread and the three scenarios."""

    def __init__(self, conn: Connection, ports: dict[str, int]) -> None:
        self.conn = conn
        self.ports = ports
        self.last_tick = time.monotonic()  #: A's loop writes it every interval; the thread reads it
        self.stalls: list[tuple[float, float]] = []  #: (reported at, silence s) from on_stall
        self.running = True
        self.gc_pauses: list[float] = []  #: each collection's duration (s), in the order they ran
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """`gc.callbacks`: a collection holds the lock throughout, like any long C call."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    def beat_thread(self) -> None:
        """The old design: beat every interval while the loop turned within the old limit."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sequence = 0
            while self.running:
                now = time.monotonic()
                if now - self.last_tick < OLD_LOOP_STALL_LIMIT_S:
                    sequence += 1
                    with contextlib.suppress(OSError):
                        sock.sendto(THREAD_BEAT.pack(sequence, now), (HOST, self.ports["b_plain"]))
                time.sleep(INTERVAL_S)

    async def ticker(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(INTERVAL_S)

    async def run(self) -> None:
        log("A: building 65 000 dialogs and the GIL blob")
        preparing = time.monotonic()
        gateway, entropy = loaded_gateway(DIALOGS)
        blob, items = gil_blob(GIL_TARGET_S)
        gc.collect()
        gc.callbacks.append(self.on_gc)
        loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(self.ticker())
        thread = threading.Thread(target=self.beat_thread, name="old-beat-thread", daemon=True)
        thread.start()
        detector = HeartbeatDetector(
            peering=Peering(KEY, "a", "b"), peer=(HOST, self.ports["b_hb"]), interval_s=INTERVAL_S, misses=MISSES,
            beat=lambda: Heartbeat("a", 1, "primary", 0), on_peer_beat=lambda beat: None,
            on_peer_dead=lambda: None, on_stall=lambda silence: self.stalls.append((time.monotonic(), silence)),
        )  # fmt: skip
        try:
            await detector.start((HOST, self.ports["a_hb"]))
            self.conn.send(("ready", len(gateway.table), items, time.monotonic() - preparing))
            await self.go(loop)
            scenarios = [await self.timed("snapshot", lambda: self.snapshot(gateway, entropy))]
            for attempt in range(1, GIL_ATTEMPTS + 1):
                scenarios.append(await self.timed("gil", functools.partial(self.hold_gil, blob)))
                hold_s = scenarios[-1]["gil_hold_ms"] / 1000
                if GIL_ACCEPTED_S[0] <= hold_s <= GIL_ACCEPTED_S[1] or attempt == GIL_ATTEMPTS:
                    break
                scenarios[-1]["name"] = f"gil_rejected_{attempt}"  # the host's load moved it: resize, again
                items = int(items * GIL_TARGET_S / hold_s)
                blob = msgspec.msgpack.encode([1] * items)  # blocks the loop too: a pause follows
                await asyncio.sleep(PAUSE_S)
            scenarios.append(await self.timed("stall", self.stall))
            self.conn.send(("done", scenarios, self.stalls, detector.stalls))
        finally:
            self.running = False
            detector.close()
            ticker.cancel()
            thread.join(timeout=1)

    async def timed(self, name: str, scenario: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `scenario` on the loop thread; its window on the host's monotonic clock, the
        collections that ran in it; then let both senders run undisturbed for a pause."""
        collections = len(self.gc_pauses)
        started = time.monotonic()
        detail = scenario()
        ended = time.monotonic()
        pauses = self.gc_pauses[collections:]
        detail["gc_collections"] = len(pauses)
        detail["longest_gc_ms"] = round(max(pauses, default=0.0) * 1000, 1)
        await asyncio.sleep(PAUSE_S)
        return {"name": name, "start": started, "end": ended, **detail}

    async def go(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for B's word to start, on the loop (no extra thread in A's interpreter)."""
        said: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not said.done():
                said.set_result(None)

        loop.add_reader(self.conn.fileno(), readable)
        try:
            await said
        finally:
            loop.remove_reader(self.conn.fileno())
        self.conn.recv()

    @staticmethod
    def snapshot(gateway: Gateway, entropy: RecordingEntropy) -> dict[str, Any]:
        """A state transfer's snapshot as the primary builds it: the cut at the Hello, then one
        part a turn (`take_frames`), each encoded (`replication.wire.CODEC`) and sealed. The
        whole runs here back to back; the primary spreads the parts over its loop turns."""
        session = Session.between(KEY, "a", b"a" * 16, "b", b"b" * 16)
        started = time.perf_counter()
        with collection_paused():  # as the primary's link does it
            recorder = Recorder(gateway, entropy, epoch=1)
            messages = list(recorder.attach(0.0).write)
            attached = time.perf_counter()
            frames, longest = [session.seal(CODEC.encode(message)) for message in messages], 0.0
            while recorder.exporting:
                turn = time.perf_counter()
                frames += [session.seal(CODEC.encode(message)) for message in recorder.take_frames()]
                longest = max(longest, time.perf_counter() - turn)
        elapsed = time.perf_counter() - started
        return {"snapshot_ms": round(elapsed * 1000, 1), "cut_ms": round((attached - started) * 1000, 1),
                "frames": len(frames), "bytes": sum(len(frame) for frame in frames),
                "longest_turn_ms": round(longest * 1000, 1)}  # fmt: skip

    @staticmethod
    def hold_gil(blob: bytes) -> dict[str, Any]:
        """One C call holding the lock: decoding the blob (freeing the result is a second one)."""
        started = time.perf_counter()
        decoded = msgspec.msgpack.decode(blob)
        decoded_at = time.perf_counter()
        del decoded
        freed_at = time.perf_counter()
        return {"gil_hold_ms": round((decoded_at - started) * 1000, 1),
                "free_ms": round((freed_at - decoded_at) * 1000, 1), "blob_bytes": len(blob)}  # fmt: skip

    @staticmethod
    def stall() -> dict[str, Any]:
        """The loop stands still; the interpreter lock is free (a wedged node)."""
        started = time.perf_counter()
        time.sleep(STALL_S)
        return {"stall_ms": round((time.perf_counter() - started) * 1000, 1)}


def node_a(conn: Connection, ports: dict[str, int]) -> None:
    """The child process's entry point."""
    try:
        asyncio.run(NodeA(conn, ports).run())
    finally:
        conn.close()


# -- B, the observer (this process) ------------------------------------------------------------


class Arrivals(asyncio.DatagramProtocol):
    """The thread's datagrams as B hears them: (arrived, sent) times."""

    def __init__(self, times: list[tuple[float, float]]) -> None:
        self.times = times

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == THREAD_BEAT.size:
            self.times.append((time.monotonic(), THREAD_BEAT.unpack(data)[1]))


def longest_silence(
    times: list[tuple[float, float]], start: float, end: float, observed_until: float
) -> dict[str, Any]:
    """The longest gap between consecutive arrivals that overlaps [start, end] (and the same on
    the sender's stamps); a silence still open when observation stopped counts up to then."""
    arrived = [a for a, _ in times]
    gap = sent_gap = 0.0
    for (prev, prev_sent), (nxt, nxt_sent) in itertools.pairwise(times):
        if nxt > start and prev < end:
            gap = max(gap, nxt - prev)
            sent_gap = max(sent_gap, nxt_sent - prev_sent)
    resumed = any(a > end for a in arrived)
    if not resumed:
        last = max((a for a in arrived if a <= observed_until), default=start)
        gap = max(gap, observed_until - max(last, start))
    return {
        "max_gap_ms": round(gap * 1000, 1),
        "max_sent_gap_ms": round(sent_gap * 1000, 1),
        "exceeds_base_window_40ms": gap > BASE_WINDOW_S,
        "exceeds_capped_window_60ms": gap > CAP_WINDOW_S,
        "beats_during": sum(start <= a <= end for a in arrived),
        "resumed": resumed,
    }


@dataclass
class Observation:
    """What B heard (arrival, sent-at pairs; monotonic s) and what A reported."""

    process: list[tuple[float, float]] = field(default_factory=list)
    thread: list[tuple[float, float]] = field(default_factory=list)
    deaths: list[float] = field(default_factory=list)  #: when B's detector declared A dead
    started: float = field(default_factory=time.monotonic)
    session_up: float = 0.0
    baseline: tuple[float, float] = (0.0, 0.0)
    until: float = 0.0  #: when A's report arrived: the end of observation
    ready: tuple[Any, ...] = ()  #: ("ready", dialogs, blob items, preparation s)
    done: tuple[Any, ...] = ()  #: ("done", scenarios, on_stall reports, A's late loop turns)


async def observe() -> Observation:
    """Run B and A until A reports its scenarios; every child process is gone on return."""
    seen = Observation()
    ports = {name: free_port(HOST) for name in ("a_hb", "b_hb", "b_plain")}
    loop = asyncio.get_running_loop()
    heard = asyncio.Event()

    def on_beat(beat: Heartbeat) -> None:
        seen.process.append((time.monotonic(), beat.sent_at))
        heard.set()

    detector = HeartbeatDetector(
        peering=Peering(KEY, "b", "a"), peer=(HOST, ports["a_hb"]), interval_s=INTERVAL_S, misses=MISSES,
        beat=lambda: Heartbeat("b", 0, "shadow", 0), on_peer_beat=on_beat,
        on_peer_dead=lambda: seen.deaths.append(time.monotonic()),
    )  # fmt: skip
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Arrivals(seen.thread), local_addr=(HOST, ports["b_plain"])
    )
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=node_a, args=(theirs, ports), name="node-a", daemon=True)
    try:
        await detector.start((HOST, ports["b_hb"]))
        child.start()
        theirs.close()
        seen.ready = await asyncio.wait_for(loop.run_in_executor(None, ours.recv), SESSION_TIMEOUT_S + 20)
        await asyncio.wait_for(heard.wait(), SESSION_TIMEOUT_S)
        seen.session_up = time.monotonic()
        await asyncio.sleep(BASELINE_S)
        seen.baseline = (time.monotonic() - BASELINE_S, time.monotonic())
        ours.send("go")
        seen.done = await asyncio.wait_for(loop.run_in_executor(None, ours.recv), REPORT_TIMEOUT_S)
        seen.until = time.monotonic()
    finally:
        detector.close()
        transport.close()
        if child.pid is not None:  # started: it exits once "done" is sent; a stuck one is killed
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
    return seen


def report(seen: Observation) -> dict[str, Any]:
    """The JSON document: settings, the baseline, then each scenario's silences per sender."""
    _, dialogs, items, preparing = seen.ready
    _, scenarios, stalls, late_turns = seen.done
    go = seen.baseline[1]
    result: dict[str, Any] = {
        "benchmark": "heartbeat_stall",
        "interval_ms": INTERVAL_S * 1000,
        "misses": MISSES,
        "window_ms": {"base": round(BASE_WINDOW_S * 1000, 1), "cap": round(CAP_WINDOW_S * 1000, 1)},
        "beater_stall_limit_ms": STALL_LIMIT_S * 1000,
        "old_thread_stall_limit_ms": OLD_LOOP_STALL_LIMIT_S * 1000,
        "dialogs": dialogs,
        "gil_blob_items": items,
        "a_prepare_s": round(preparing, 2),  # untimed: dialogs built, blob calibrated
        "session_up_after_s": round(seen.session_up - seen.started, 2),
        "baseline": {
            "process": longest_silence(seen.process, *seen.baseline, seen.until),
            "thread": longest_silence(seen.thread, *seen.baseline, seen.until),
        },
        "scenarios": {},
        # A's loop turns its detector saw arrive more than two intervals late (whole run).
        "a_late_loop_turns": late_turns,
        "b_declared_a_dead_at_s": [round(at - go, 3) for at in seen.deaths],  # s after "go"
        "run_s": round(seen.until - seen.started, 1),
    }
    edges = [scenario["start"] for scenario in scenarios[1:]] + [seen.until]
    for scenario, until in zip(scenarios, edges, strict=True):
        name, start, end = scenario.pop("name"), scenario.pop("start"), scenario.pop("end")
        process = longest_silence(seen.process, start, end, seen.until)
        process["on_stall_ms"] = [round(silence * 1000, 1) for at, silence in stalls if start <= at < until]
        process["b_declared_dead"] = any(start <= at < until for at in seen.deaths)
        result["scenarios"][name] = {
            "duration_ms": round((end - start) * 1000, 1),
            **scenario,
            "starts_at_s": round(start - go, 3),
            "process": process,
            "thread": longest_silence(seen.thread, start, end, seen.until),
        }
    return result


def main() -> None:
    result = report(asyncio.run(observe()))
    result["machine"] = machine()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
