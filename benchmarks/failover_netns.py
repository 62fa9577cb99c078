"""Failover time on the namespace test bed, per fault kind: from the fault to the first reply
from the shadow seen in the client namespace (an OPTIONS pinger there, one request per ms).

    kill       SIGKILL the primary node (its kernel keeps the VIP until the GARP moves it)
    crash      the primary's links go down at once (a dead box)
    partition  only the heartbeat link: the right answer is no takeover at all

Each trial is a fresh test bed; `--beds N` runs N of them at once (on a small machine that is
what loads it: four beds on two cores is the case of issue 10). Per fault it reports, as
nearest-rank percentiles (with 20 trials p99 is the largest), the failover time seen by the
client, the detection time (to the shadow's verdict) and the takeover's own time, all from
the moment `fail()` returned, as before; and it counts false takeovers: a verdict before the
fault was injected, or any takeover under a partition (and, apart, aborted takeovers). `fault_injection_ms` is how long
`fail()` took (a crash runs `ip`: under load the links go down some ms before it returns).
The trial starts its clock only once the client's pinger is up (on a loaded machine its
start-up can outlast the trial). JSON out; needs root.

    .venv/bin/python benchmarks/failover_netns.py [--trials 20] [--partition-trials 5] [--beds 1]
        [--hold-s 0.5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import log, machine, nearest_rank
from sipshadow.lab.netns_lab import SIP_PORT, NetnsLab

#: The detector's log line when a late beat widens its window (absent from older code).
WIDENED = re.compile(r"detection window (\d+(?:\.\d+)?) ms")


def wait_for_sigterm_handler(pid: int, timeout_s: float = 20.0) -> None:
    """Wait until the pinger catches SIGTERM: it pings from then on, and prints its samples when
    stopped. On a loaded machine its start-up can outlast a whole trial, and a pinger killed
    before it set its handler prints nothing (a lost trial, not a slow failover)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.01)
    raise TimeoutError(f"the pinger did not start within {timeout_s} s")


def one_trial(how: str, workdir: Path, hold_s: float) -> dict[str, Any]:
    with NetnsLab(workdir) as lab:
        pinger = subprocess.Popen(
            lab.testbed.exec_argv("client", [sys.executable, "-m", "sipshadow.lab.pinger", lab.topology.vip,
                                             str(SIP_PORT), "--interval-ms", "1"]),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_sigterm_handler(pinger.pid)
        time.sleep(hold_s)  # steady state: a takeover here is a false one
        fault_started = time.time()  # a takeover before this is a false one
        lab.fail(how)
        fault_at = time.time()  # the fault is in effect: the node is dead, the links are down
        if how == "partition":
            time.sleep(1.0)
        else:
            lab.wait_for_takeover()
            time.sleep(0.2)
        pinger.terminate()
        answers = [json.loads(line) for line in pinger.communicate(timeout=10)[0].splitlines()]
        shadow_role, primary_role = lab.role_of("shadow"), lab.role_of("primary")
        ha = json.loads(lab.nodes["shadow"].status_file.read_text())["ha"]  # the file's keys, whatever reads it
        shadow_log = lab.nodes["shadow"].log_file.read_text(errors="replace")
    takeovers = ha["takeovers"]
    done = [t for t in takeovers if "verdict_at" in t]  # the others were aborted: the address was owned
    false_takeovers = [t for t in done if how == "partition" or t["verdict_at"] < fault_started]
    real = [t for t in done if t not in false_takeovers]
    after = [a["answered"] for a in answers if a["sent"] > fault_at]
    gaps = [b - a for a, b in zip([fault_at, *after], after, strict=False)]
    windows = [float(w) for w in WIDENED.findall(shadow_log)]
    return {
        "failover_ms": round((after[0] - fault_at) * 1000, 2) if after and how != "partition" else None,
        "detection_ms": round((real[0]["verdict_at"] - fault_at) * 1000, 2) if real else None,
        "takeover_ms": real[0]["ms"] if real else None,
        "fault_injection_ms": round((fault_at - fault_started) * 1000, 2),
        "longest_silence_ms": round(max(gaps) * 1000, 2) if gaps else None,
        "shadow_role": shadow_role,
        "primary_role": primary_role,
        # Under a partition both nodes live: did they end with one primary? (A killed node's file is stale.)
        "two_primaries_at_end": how == "partition" and shadow_role == primary_role == "primary",
        "false_takeovers": len(false_takeovers),
        "aborted_takeovers": len(takeovers) - len(done),
        "detector_stalls": ha.get("detector_stalls", 0),
        "widest_window_ms": max(windows) if windows else None,
    }


def run_trial(how: str, workdir: Path, hold_s: float) -> dict[str, Any]:
    """One trial; a bed that fails to come up (or never takes over) is reported, not fatal."""
    try:
        return one_trial(how, workdir, hold_s)
    except Exception as error:  # one broken bed must not lose the other results
        return {"error": f"{type(error).__name__}: {error}", "failover_ms": None, "detection_ms": None,
                "false_takeovers": 0}  # fmt: skip


def percentiles(values: list[float]) -> dict[str, float] | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return {
        "p50": nearest_rank(ordered, 0.50),
        "p95": nearest_rank(ordered, 0.95),
        "p99": nearest_rank(ordered, 0.99),
        "max": ordered[-1],
    }


def summarize(how: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["failover_ms"] for r in results if r["failover_ms"] is not None]
    summary: dict[str, Any] = {
        "trials": len(results),
        "errors": [r["error"] for r in results if "error" in r],
        "false_takeovers": sum(r["false_takeovers"] for r in results),
        "aborted_takeovers": sum(r.get("aborted_takeovers", 0) for r in results),
        "detector_stalls": sum(r.get("detector_stalls", 0) for r in results),
        "two_primaries_at_end": sum(1 for r in results if r.get("two_primaries_at_end")),
    }
    if how == "partition":
        summary["takeovers"] = sum(1 for r in results if r.get("shadow_role") == "primary")
        summary["longest_silence_ms"] = max((r.get("longest_silence_ms") or 0 for r in results), default=0)
        return summary
    summary["no_answer_after_fault"] = len(results) - len(summary["errors"]) - len(times)
    summary["failover_ms"] = percentiles(times)
    summary["detection_ms"] = percentiles([r["detection_ms"] for r in results if r["detection_ms"] is not None])
    summary["takeover_internal_ms"] = percentiles([r["takeover_ms"] for r in results if r.get("takeover_ms")])
    summary["fault_injection_ms"] = percentiles([r["fault_injection_ms"] for r in results if "fault_injection_ms" in r])
    summary["all_failover_ms"] = [r["failover_ms"] for r in results]
    summary["all_detection_ms"] = [r["detection_ms"] for r in results]
    summary["widest_window_ms"] = [r.get("widest_window_ms") for r in results]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="trials per fault (kill, crash)")
    parser.add_argument("--partition-trials", type=int, default=5)
    parser.add_argument("--beds", type=int, default=1, help="test beds run at once")
    parser.add_argument("--hold-s", type=float, default=0.5, help="steady state before the fault")
    parser.add_argument("--keep", type=Path, help="keep every bed's logs under this directory")
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "failover_netns", "machine": machine(), "beds": args.beds,
                              "hold_s": args.hold_s, "heartbeat": "10 ms interval, 4 misses", "faults": {}}  # fmt: skip
    counts = {"kill": args.trials, "crash": args.trials, "partition": args.partition_trials}
    plan = [(how, index) for how, trials in counts.items() for index in range(trials)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sipshadow-failover-") as tmp, ThreadPoolExecutor(args.beds) as pool:
        root = args.keep.resolve() if args.keep else Path(tmp)
        futures = {cell: pool.submit(run_trial, cell[0], root / f"{cell[0]}-{cell[1]}", args.hold_s)
                   for cell in plan}  # fmt: skip
        results: dict[str, list[dict[str, Any]]] = {}
        for (how, index), future in futures.items():
            result = future.result()
            results.setdefault(how, []).append(result)
            flags = (", FALSE TAKEOVER" if result["false_takeovers"] else "") + (
                f", {result['error']}" if "error" in result else ""
            )
            log(f"{how} {index + 1}: failover {result['failover_ms']} ms, detection {result['detection_ms']} ms{flags}")
    report["faults"] = {how: summarize(how, outcomes) for how, outcomes in results.items()}
    report["false_takeovers"] = sum(summary["false_takeovers"] for summary in report["faults"].values())
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
