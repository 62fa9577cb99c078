"""Failover time on the namespace test bed, per fault kind: from the fault to the first reply
from the shadow seen in the client namespace (an OPTIONS pinger there, one request per ms).

    kill       SIGKILL the primary node (its kernel keeps the VIP until the GARP moves it)
    crash      the primary's links go down at once (a dead box)
    partition  only the heartbeat link: the right answer is no takeover at all

Each trial is a fresh test bed. JSON out; needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import log, machine, nearest_rank
from sipshadow.lab.netns_lab import SIP_PORT, NetnsLab


def one_trial(how: str, workdir: Path) -> dict[str, Any]:
    with NetnsLab(workdir) as lab:
        pinger = subprocess.Popen(
            lab.testbed.exec_argv("client", [sys.executable, "-m", "sipshadow.lab.pinger", lab.topology.vip,
                                             str(SIP_PORT), "--interval-ms", "1"]),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        lab.fail(how)
        fault_at = time.time()  # the fault is in effect: the node is dead, the links are down
        if how == "partition":
            time.sleep(1.0)
        else:
            lab.wait_for_takeover()
            time.sleep(0.2)
        pinger.terminate()
        answers = [json.loads(line) for line in pinger.communicate(timeout=10)[0].splitlines()]
        shadow_role = lab.role_of("shadow")
        takeovers = lab.nodes["shadow"].status()["ha"]["takeovers"]
    after = [a["answered"] for a in answers if a["sent"] > fault_at]
    gaps = [b - a for a, b in zip([fault_at, *after], after, strict=False)]
    return {
        "failover_ms": round((after[0] - fault_at) * 1000, 2) if after else None,
        "longest_silence_ms": round(max(gaps) * 1000, 2) if gaps else None,
        "shadow_role": shadow_role,
        "takeover": takeovers[-1] if takeovers else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--partition-trials", type=int, default=5)
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "failover_netns", "machine": machine(),
                              "heartbeat": "10 ms interval, 4 misses", "faults": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sipshadow-failover-") as tmp:
        for how, trials in (("kill", args.trials), ("crash", args.trials), ("partition", args.partition_trials)):
            results = []
            for index in range(trials):
                results.append(one_trial(how, Path(tmp) / f"{how}-{index}"))
                log(f"{how} {index + 1}/{trials}: {results[-1]['failover_ms']} ms, shadow {results[-1]['shadow_role']}")
            times = sorted(r["failover_ms"] for r in results if r["failover_ms"] is not None)
            summary: dict[str, Any] = {"trials": trials, "no_answer_after_fault": trials - len(times)}
            if how == "partition":
                summary["takeovers"] = sum(1 for r in results if r["shadow_role"] == "primary")
                summary["longest_silence_ms"] = max(r["longest_silence_ms"] or 0 for r in results)
            elif times:
                summary.update(
                    median_ms=round(statistics.median(times), 2),
                    p99_ms=nearest_rank(times, 0.99),
                    min_ms=times[0],
                    all_ms=[r["failover_ms"] for r in results],
                    takeover_internal_ms=[r["takeover"]["ms"] for r in results if r["takeover"]],
                )
            report["faults"][how] = summary
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
