"""Where a serving node's CPU goes: py-spy samples a solo node under SIPp load; JSON out.

A solo `sipshadow serve` (every feature on, as in cps.py) with two SIPp UAS members takes
`--rate` calls/s for `--seconds` from a SIPp UAC (-nr); `py-spy record` samples it meanwhile
(Python frames; `--native` adds C frames, but stops the node per sample). The JSON gives the top
functions by self time and by inclusive time, each as a share of all samples, and the node's
CPU per 1000 calls. Needs root (py-spy attaches with ptrace) and the dev dependencies.

    .venv/bin/python benchmarks/profile_node.py --rate 800 --seconds 20
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import FEATURES, alg_front, machine, per_1000
from sipshadow.lab.sipp import SippUac, SippUas

#: py-spy's raw frame: "function (file:line)"; the line number is dropped so a function is one row.
_FRAME_RE = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`handle (sipshadow/core/gateway.py:120)` -> `handle (core/gateway.py)`: one row per function."""
    match = _FRAME_RE.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("/sipshadow/", "site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path})" if path else match["function"]


def shares(collapsed: str, top: int) -> dict[str, Any]:
    """Self and inclusive shares (percent of all samples) of the `top` functions."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def rows(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "percent": round(100 * n / total, 1)} for name, n in counter.most_common(top)]

    return {"samples": total, "self": rows(own), "inclusive": rows(inclusive)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=800, help="calls per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--sample-hz", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--bare", action="store_true", help="without call records and metrics")
    parser.add_argument("--native", action="store_true", help="C frames too (stops the node per sample: slows it)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    calls = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory(prefix="sipshadow-profile-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        members = [stack.enter_context(SippUas(workdir, name=f"uas{i}", timeout=args.seconds + 90)) for i in range(2)]
        alg = stack.enter_context(alg_front([m.address for m in members], workdir, features=not args.bare))
        raw = workdir / "profile.txt"
        cpu_before = alg.cpu_seconds()
        uac = SippUac(alg.listen, workdir, calls=calls, rate=args.rate, extra_args=["-nr", "-l", str(args.rate * 10)],
                      timeout=args.seconds + 60, recv_timeout=5.0)  # fmt: skip
        stack.enter_context(uac)
        time.sleep(1.0)  # past the ramp
        record = [py_spy, "record", "--pid", str(alg.pid), "--rate", str(args.sample_hz),
                  "--duration", str(int(args.seconds - 3)), "--format", "raw", "--output", str(raw)]  # fmt: skip
        # --native stops the node for each sample (py-spy cannot read C stacks otherwise), which
        # at this rate costs it calls; by default py-spy samples without stopping it
        record.append("--native" if args.native else "--nonblocking")
        done = subprocess.run(record, capture_output=True, text=True, timeout=args.seconds + 60, check=False)
        if done.returncode != 0:
            raise SystemExit(f"py-spy failed: {done.stderr.strip()[-500:]}")
        result = uac.wait()
        cpu_after = alg.cpu_seconds()
        report = {
            "benchmark": "profile_node",
            "machine": machine(),
            "rate_cps": args.rate,
            "calls": calls,
            "successful": result.successful_calls,
            "failed": result.failed_calls,
            "features": [] if args.bare else list(FEATURES),
            "node_cpu_s_per_1000_calls": per_1000(cpu_before, cpu_after, calls),
            **shares(raw.read_text(), args.top),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
