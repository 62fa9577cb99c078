"""Highest zero-failure call rate: SIPp direct vs through sipshadow vs through Kamailio; JSON out.

For each path the same ladder of rates is climbed, every step a fresh set of processes and a
SIPp UAC run of at least `--seconds` seconds with no retransmissions (`-nr`); the highest rate
with zero failed calls is the path's capacity. The ALG's CPU seconds per 1000 calls and its
memory per held dialog (20 000 long calls) are measured in the same run. All on loopback.

    .venv/bin/python benchmarks/cps.py                # full run (several minutes)
    .venv/bin/python benchmarks/cps.py --quick        # a short look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from harness import LADDER, Front, alg_front, capacity, direct_front, log, machine
from sipshadow.lab.kamailio import KamailioProcess, kamailio_available
from sipshadow.lab.sipp import SippUac, SippUas, free_udp_port


@contextlib.contextmanager
def kamailio_front(members: list[tuple[str, int]], workdir: Path) -> Iterator[KamailioProcess]:
    with KamailioProcess(("127.0.0.1", free_udp_port()), members, workdir, workers=2) as kamailio:
        yield kamailio


def memory_per_dialog(root: Path, dialogs: int, rate: int, hold_s: int, rounds: int = 2) -> dict[str, Any]:
    """RSS of the ALG holding `dialogs` long calls, per dialog; then again after they end."""
    workdir = root / "memory"
    workdir.mkdir()
    ramp_s = dialogs / rate
    linger = 2.0
    samples: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        uas = [
            stack.enter_context(SippUas(workdir, name=f"uas{i}", timeout=rounds * (ramp_s + hold_s) + 120))
            for i in range(2)
        ]
        alg = stack.enter_context(alg_front([m.address for m in uas], workdir, linger=linger))
        process = psutil.Process(alg.pid)
        time.sleep(1.0)
        baseline = process.memory_info().rss
        for round_index in range(rounds):
            uac = SippUac(
                alg.listen, workdir, name=f"uac-hold{round_index}", calls=dialogs, rate=rate,
                extra_args=["-nr", "-d", str(hold_s * 1000), "-l", str(dialogs)],
                timeout=ramp_s + hold_s + 60, recv_timeout=10.0,
            )  # fmt: skip
            uac.start()
            time.sleep(ramp_s + min(5.0, hold_s / 4))
            held = alg.status().dialogs or 0
            peak = process.memory_info().rss
            result = uac.wait()
            time.sleep(linger + 2.0)  # dialogs linger after their BYE, then the timer reaps them
            after = process.memory_info().rss
            samples.append({
                "round": round_index + 1,
                "dialogs_held": held,
                "rss_held_mb": round(peak / 2**20, 1),
                "bytes_per_dialog": round((peak - baseline) / max(held, 1)),
                "rss_after_calls_end_mb": round(after / 2**20, 1),
                "dialogs_after_end": alg.status().dialogs,
                "calls_failed": result.failed_calls,
            })  # fmt: skip
            log(f"memory round {round_index + 1}: {samples[-1]}")
    first, last = samples[0], samples[-1]
    return {
        "dialogs": dialogs,
        "rss_baseline_mb": round(baseline / 2**20, 1),
        "bytes_per_dialog": first["bytes_per_dialog"],
        "rounds": samples,
        "rss_growth_between_rounds_mb": round(last["rss_after_calls_end_mb"] - first["rss_after_calls_end_mb"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each rate step (>= 15 for the record)")
    parser.add_argument("--ladder", type=lambda text: tuple(int(x) for x in text.split(",")), default=LADDER)
    parser.add_argument("--paths", default="direct,sipshadow,kamailio")
    parser.add_argument("--dialogs", type=int, default=20000, help="long calls held for the memory figure (0: skip)")
    parser.add_argument("--quick", action="store_true", help="5 s steps, short ladder, 2000 dialogs")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.ladder, args.dialogs = 5.0, (500, 1500), 2000
    fronts: dict[str, tuple[Front, int]] = {
        "direct": (direct_front, 1),
        "sipshadow": (alg_front, 2),
        "kamailio": (kamailio_front, 2),
    }
    report: dict[str, Any] = {"benchmark": "cps", "seconds_per_step": args.seconds, "machine": machine(), "paths": {}}
    with tempfile.TemporaryDirectory(prefix="sipshadow-cps-") as tmp:
        root = Path(tmp)
        for name in args.paths.split(","):
            if name == "kamailio" and not kamailio_available():
                report["paths"][name] = {"skipped": "kamailio is not installed (Debian package kamailio)"}
                continue
            factory, members = fronts[name]
            report["paths"][name] = capacity(name, factory, members, args.ladder, args.seconds, root)
        if args.dialogs:
            report["memory"] = memory_per_dialog(root, args.dialogs, rate=1000, hold_s=30 if not args.quick else 8)
    paths = report["paths"]
    if "direct" in paths and "sipshadow" in paths:
        report["sipshadow_vs_direct_capacity"] = round(
            paths["sipshadow"]["max_zero_failure_cps"] / max(paths["direct"]["max_zero_failure_cps"], 1), 3
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
