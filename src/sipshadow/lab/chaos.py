"""`sipshadow lab chaos`: the pair through fault after fault, healed each time, under SIPp load.

SIPp places calls with no retransmissions (-nr) through the namespace bed for the whole run.
Every `gap` seconds (drawn from a range) one fault hits the pair, in a shuffled cycle of
`FAULT_KINDS`, always aimed at the node serving *now* (or its shadow for `shadow-kill`):

- kill: SIGKILL of the serving node; the shadow takes over; heal: the node restarts as shadow.
- crash: the serving host's links go down; the shadow takes over; heal: the host "reboots"
  (its processes killed, links up) and the node restarts as shadow.
- partition: the replication link goes down; the arbiter (service network) holds the shadow
  back, so no takeover is expected; heal: the link comes up and the shadow resyncs.
- freeze: SIGSTOP of the serving node for `freeze_s`, then SIGCONT; the shadow takes over; the
  resumed node is fenced, hears the newer primary, steps down and rejoins as shadow by itself.
- shadow-kill: SIGKILL of the shadow; no takeover expected; heal: it restarts and resyncs.

After each heal the run waits until the serving node has a shadow in sync again (the replica
checks the primary's state digest on every entry it applies: `divergences` is the oracle).
The mirror copies both nodes' frames to each other (`lab.bed.mirror`), so whichever node
serves, its shadow has the copies: healing needs no change on the switch.

Writes, in `out`: `timeline.csv` (one row per fault: kind, host, times, takeover and its
detection and serving times, calls failed in the step, divergences), `summary.json`,
`resources.csv` (both nodes' RSS and CPU every second) and `chaos.png`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from sipshadow.lab.bed import faults
from sipshadow.lab.netns_lab import NetnsLab
from sipshadow.lab.sipp import read_stat_rows

FAULT_KINDS = ("kill", "crash", "partition", "freeze", "shadow-kill")
#: Faults after which the shadow must take over; after the others a takeover is a false one.
TAKES_OVER = frozenset({"kill", "crash", "freeze"})
CALL_MS = 4000
HOSTS = ("primary", "shadow")


@dataclass(frozen=True)
class ChaosConfig:
    minutes: float = 10.0
    rate: float = 200.0
    gap_s: tuple[float, float] = (20.0, 40.0)  #: seconds between faults, drawn uniformly
    freeze_s: float = 2.0
    seed: int = 1
    out: Path = Path("runs/chaos")


@dataclass
class Step:
    """One fault and its healing; times in seconds since the load started, durations in ms."""

    index: int
    kind: str
    host: str  #: the host the fault hit
    role: str  #: what that host was then: primary or shadow
    at_s: float
    takeover: bool = False
    detection_ms: float | None = None  #: fault to the takeover's decision
    serving_ms: float | None = None  #: fault to the new primary serving
    healed_s: float | None = None  #: back to a pair with a synced shadow
    failed_calls: int = 0  #: SIPp's failed calls whose failure came in this step's window
    divergences: int = 0  #: the shadow's, when healed
    note: str = ""


@dataclass
class Sample:
    at_s: float
    host: str
    rss_mb: float
    cpu_s: float


@dataclass
class Run:
    steps: list[Step] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def run_chaos(config: ChaosConfig) -> int:
    """The run; returns 0 when no call failed, no takeover was false and nothing diverged."""
    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    duration_s = config.minutes * 60
    calls = int(config.rate * duration_s)
    run = Run()
    with NetnsLab(out / "bed", mode="active") as lab:
        uac = lab.client_uac(calls, config.rate, call_ms=CALL_MS, timeout=duration_s + 120).start()
        started = time.monotonic()
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(lab, started, run.samples, stop), daemon=True)
        sampler.start()
        kinds: list[str] = []
        last_s = 0.0  # when the last step was healed (s since the load started)
        try:
            while True:
                next_s = last_s + rng.uniform(*config.gap_s)
                if next_s > duration_s - 15:  # the last calls need a quiet end
                    break
                time.sleep(max(0.0, started + next_s - time.monotonic()))
                if not kinds:
                    kinds = list(FAULT_KINDS)
                    rng.shuffle(kinds)
                step = _fault(lab, kinds.pop(), len(run.steps) + 1, started, config)
                run.steps.append(step)
                last_s = step.healed_s or next_s
                print(f"[chaos] {step.at_s:7.1f} s  #{step.index} {step.kind} on {step.host} ({step.role}): "
                      f"takeover={step.takeover} detection={step.detection_ms} ms serving={step.serving_ms} ms "
                      f"healed at {step.healed_s:.1f} s {step.note}", flush=True)  # fmt: skip
            result = uac.wait()
        finally:
            stop.set()
            sampler.join(5)
    _attribute_failures(run.steps, uac.stat_file, started_wall=time.time() - (time.monotonic() - started))
    summary = _summary(run, result.successful_calls, result.failed_calls, calls, config)
    _write(out, run, summary)
    _plot(out, run, uac.stat_file)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


def _serving(lab: NetnsLab) -> str:
    for host in HOSTS:
        if lab.role_of(host) == "primary":
            return host
    raise RuntimeError("no node serves")


def _fault(lab: NetnsLab, kind: str, index: int, started: float, config: ChaosConfig) -> Step:
    serving = _serving(lab)
    other = "shadow" if serving == "primary" else "primary"
    host = other if kind == "shadow-kill" else serving
    takeovers_before = {h: len(_takeovers(lab, h)) for h in HOSTS}
    fault_wall = time.time()
    step = Step(index, kind, host, "shadow" if kind == "shadow-kill" else "primary", time.monotonic() - started)
    tb = lab.testbed
    if kind in ("kill", "shadow-kill"):
        lab.nodes[host].kill()
    elif kind == "crash":
        faults.crash(tb, host)
    elif kind == "partition":
        tb.ip(host, "link", "set", tb.replication_if(host), "down")
    elif kind == "freeze":
        os.kill(lab.nodes[host].pid, signal.SIGSTOP)
        time.sleep(config.freeze_s)
        os.kill(lab.nodes[host].pid, signal.SIGCONT)
    if kind in TAKES_OVER:
        NetnsLab.wait(lambda: lab.role_of(other) == "primary", f"{other} to take over after {kind}")
        record = _takeovers(lab, other)[-1]
        step.takeover = True
        if record.verdict_at is not None and record.serving_at is not None:
            step.detection_ms = round((record.verdict_at - fault_wall) * 1000, 1)
            step.serving_ms = round((record.serving_at - fault_wall) * 1000, 1)
    _heal(lab, kind, host, other if kind in TAKES_OVER else serving)
    false = [h for h in HOSTS if len(_takeovers(lab, h)) > takeovers_before[h] + (h == other and kind in TAKES_OVER)]
    if false:
        step.note = f"false takeover on {', '.join(false)}"
    shadow_host = "shadow" if _serving(lab) == "primary" else "primary"
    shadow = lab.nodes[shadow_host].status().ha.shadow  # type: ignore[union-attr]
    step.divergences = shadow.divergences if shadow is not None else -1
    step.healed_s = time.monotonic() - started
    return step


def _heal(lab: NetnsLab, kind: str, host: str, serving: str) -> None:
    """Undo `kind` on `host`, then wait until `serving` has a shadow in sync."""
    tb = lab.testbed
    if kind in ("kill", "shadow-kill"):
        lab.start_node(host, "shadow")
    elif kind == "crash":
        faults.kill(tb, host)  # the box reboots: nothing of it lives on
        lab.nodes[host].child.wait(5)
        faults.recover(tb, host)
        lab.start_node(host, "shadow")
    elif kind == "partition":
        tb.ip(host, "link", "set", tb.replication_if(host), "up")
    other = "shadow" if serving == "primary" else "primary"
    time.sleep(1.0)  # the status files (every 50 ms) and the link's own detection catch up first
    NetnsLab.wait(lambda: lab.role_of(serving) == "primary" and _attached(lab, serving) and lab.synced(other),
                  f"{other} to sync after {kind}", timeout_s=30)  # fmt: skip


def _attached(lab: NetnsLab, host: str) -> bool:
    """Whether the node on `host` has a shadow attached to its log and caught up (its own view)."""
    try:
        replication = lab.nodes[host].status().replication
    except (OSError, ValueError):
        return False
    return replication is not None and replication.shadow_attached and not replication.shadow_joining


def _takeovers(lab: NetnsLab, host: str) -> list:  # type: ignore[type-arg]
    try:
        ha = lab.nodes[host].status().ha
    except (OSError, ValueError):
        return []
    return [t for t in ha.takeovers if t.aborted is None] if ha is not None else []


def _sample(lab: NetnsLab, started: float, samples: list[Sample], stop: threading.Event) -> None:
    """Both nodes' RSS (MB) and CPU time (s) once a second, whichever process each host runs now."""
    while not stop.wait(1.0):
        for host in HOSTS:
            node = lab.nodes.get(host)
            try:
                process = psutil.Process(node.pid) if node is not None else None
                if process is None:
                    continue
                cpu, rss = process.cpu_times(), process.memory_info().rss
                at = round(time.monotonic() - started, 1)
                samples.append(Sample(at, host, round(rss / 2**20, 1), round(cpu.user + cpu.system, 2)))
            except (psutil.Error, RuntimeError):
                continue


def _attribute_failures(steps: list[Step], stat_file: Path, started_wall: float) -> None:
    """SIPp's failed calls, by the period they were counted in, to the step whose window holds it."""
    previous = 0
    for row in read_stat_rows(stat_file):
        failed = int(row.get("FailedCall(C)", "0") or 0)
        if failed == previous:
            continue
        at_s = float(row["CurrentTime"].split("\t")[-1]) - started_wall
        owner = None
        for step in steps:
            if step.at_s <= at_s:
                owner = step
        if owner is not None:
            owner.failed_calls += failed - previous
        previous = failed


def _summary(run: Run, successful: int, failed: int, placed: int, config: ChaosConfig) -> dict[str, object]:
    by_kind: dict[str, dict[str, int]] = {}
    for step in run.steps:
        entry = by_kind.setdefault(step.kind, {"faults": 0, "failed_calls": 0})
        entry["faults"] += 1
        entry["failed_calls"] += step.failed_calls
    false = sum(1 for step in run.steps if step.note.startswith("false"))
    divergences = sum(max(0, step.divergences) for step in run.steps)
    rss = {host: [s.rss_mb for s in run.samples if s.host == host] for host in HOSTS}
    return {
        "minutes": config.minutes, "rate": config.rate, "seed": config.seed, "faults": len(run.steps),
        "calls_placed": placed, "calls_successful": successful, "calls_failed": failed, "by_kind": by_kind,
        "false_takeovers": false, "divergences": divergences,
        "rss_mb": {host: {"min": min(v), "max": max(v)} for host, v in rss.items() if v},
        "ok": failed == 0 and false == 0 and divergences == 0,
    }  # fmt: skip


def _write(out: Path, run: Run, summary: dict[str, object]) -> None:
    with (out / "timeline.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(run.steps[0]).keys()) if run.steps else ["index"])
        writer.writeheader()
        for step in run.steps:
            writer.writerow(asdict(step))
    with (out / "resources.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["at_s", "host", "rss_mb", "cpu_s"])
        writer.writeheader()
        for sample in run.samples:
            writer.writerow(asdict(sample))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _plot(out: Path, run: Run, stat_file: Path) -> None:
    """Calls per second and failures over time, the faults marked; both nodes' RSS below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_stat_rows(stat_file)
    elapsed, rate, failed = [], [], []
    for row in rows:
        hours, minutes, seconds = (float(part) for part in row["ElapsedTime(C)"].split(":")[:3])
        elapsed.append(hours * 3600 + minutes * 60 + seconds)
        rate.append(float(row.get("CallRate(P)", "0") or 0))
        failed.append(int(row.get("FailedCall(C)", "0") or 0))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(elapsed, rate, label="calls/s offered (SIPp)")
    top.plot(elapsed, failed, label="failed calls (cumulative)", color="red")
    for step in run.steps:
        top.axvline(step.at_s, color="grey", linestyle=":", linewidth=0.8)
        top.annotate(step.kind, (step.at_s, max(rate or [1]) * 0.95), rotation=90, fontsize=7)
    top.set_ylabel("calls")
    top.legend(loc="lower left")
    for host in HOSTS:
        points = [(s.at_s, s.rss_mb) for s in run.samples if s.host == host]
        if points:
            bottom.plot(*zip(*points, strict=True), label=f"{host} host node RSS")
    bottom.set_ylabel("MB")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(out / "chaos.png", dpi=110)
    plt.close(figure)
