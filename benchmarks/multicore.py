"""One node against N nodes on one host (N pairs behind DNS SRV, docs/performance.md); JSON out.

Each of N solo nodes (every feature on, as in cps.py) has its own address and takes 1/N of the
calls from a SIPp UAC of its own (what SRV's equal weights do); the members (two SIPp UAS) are
shared. The ladder climbs the total rate; the highest with no failed call is the capacity of N
nodes. CPU per 1000 calls sums the nodes. On the 2-core machine SIPp shares the cores, so the
scaling it shows is a floor.

    .venv/bin/python benchmarks/multicore.py --nodes 1,2 --ladder 1000,1500,2000,2500,3000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import FEATURES, LADDER, alg_front, log, machine, per_1000
from sipshadow.lab.sipp import SippUac, SippUas


def step(nodes: int, rate: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """`nodes` nodes, `rate` calls/s in all for `seconds`: calls, failures, the nodes' CPU."""
    workdir.mkdir(parents=True)
    share = rate // nodes
    calls = int(share * seconds)
    with contextlib.ExitStack() as stack:
        members = [stack.enter_context(SippUas(workdir, name=f"uas{i}", timeout=seconds + 90)) for i in range(2)]
        fronts = [stack.enter_context(alg_front([m.address for m in members], workdir / f"node{k}"))
                  for k in range(nodes)]  # fmt: skip
        before = sum(front.cpu_seconds() for front in fronts)
        uacs = [
            SippUac(front.listen, workdir, name=f"uac{k}", calls=calls, rate=share, timeout=seconds + 60,
                    extra_args=["-nr", "-l", str(share * 10)], recv_timeout=5.0)
            for k, front in enumerate(fronts)
        ]  # fmt: skip
        for uac in uacs:
            stack.enter_context(uac)
        results = [uac.wait() for uac in uacs]
        after = sum(front.cpu_seconds() for front in fronts)
    successful = sum(result.successful_calls for result in results)
    total = calls * nodes
    return {
        "rate_cps": share * nodes,
        "calls": total,
        "successful": successful,
        "failures_per_10k": round((total - successful) / total * 1e4, 1),
        "passed": successful == total,
        "cpu_s_per_1000_calls": per_1000(before, after, total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2", help="node counts to compare")
    parser.add_argument("--ladder", type=lambda text: tuple(int(x) for x in text.split(",")), default=LADDER)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "multicore", "machine": machine(), "features": list(FEATURES),
                              "seconds_per_step": args.seconds, "nodes": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sipshadow-multicore-") as tmp:
        for count in (int(n) for n in args.nodes.split(",")):
            steps = []
            for rate in args.ladder:
                outcome = step(count, rate, args.seconds, Path(tmp) / f"n{count}-{rate}")
                log(f"{count} node(s) {rate:5d} cps: {outcome}")
                steps.append(outcome)
                time.sleep(1.0)
                if outcome["failures_per_10k"] > 100:  # collapsed: the next steps would too
                    break
            passed = [s["rate_cps"] for s in steps if s["passed"]]
            first_fail = next((s["rate_cps"] for s in steps if not s["passed"]), None)
            report["nodes"][count] = {
                "max_zero_failure_cps": max((r for r in passed if first_fail is None or r < first_fail), default=0),
                "steps": steps,
            }
    counts = sorted(report["nodes"])
    base = report["nodes"][counts[0]]["max_zero_failure_cps"]
    if len(counts) > 1 and base:
        report["scaling"] = {str(n): round(report["nodes"][n]["max_zero_failure_cps"] / base, 2) for n in counts}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
