"""What active replication costs and how fast it takes over, on loopback; JSON out.

overhead   highest zero-failure call rate for solo, primary+shadow with output commit on,
           and with it off, side by side in one run; CPU per 1000 calls on each node
side       CPU per 1000 calls of solo, commit on and commit off back to back at a few rates,
           several rounds: the primary/solo and shadow/primary ratios, each within a round
latency    the added response time: OPTIONS round trips to the ALG (answered by its core,
           so they pass through output commit) while SIPp holds a steady load
takeover   SIGKILL the primary, time until a request is answered again (>= 20 trials)
soak       both nodes' RSS over a long run at half the solo capacity, with the shadow
           killed for a while in the middle (the primary must not grow) and rejoining

.venv/bin/python benchmarks/replication.py                      # overhead, latency, takeover
.venv/bin/python benchmarks/replication.py --soak-minutes 10    # plus the soak
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from harness import LADDER, alg_front, capacity, log, machine, nearest_rank, trial
from sipshadow.lab.pair import LoopbackPair
from sipshadow.lab.pinger import Pinger
from sipshadow.lab.sipp import SippUac, SippUas, free_port

Address = tuple[str, int]


class PairFront:
    """A LoopbackPair seen as a benchmark front: the primary's address and both nodes' CPU."""

    def __init__(self, pair: LoopbackPair) -> None:
        self.pair = pair
        self.listen = pair.service

    def cpu_seconds(self) -> float:
        return self.pair.nodes["a"].cpu_seconds()

    def shadow_cpu_seconds(self) -> float:
        return self.pair.nodes["b"].cpu_seconds()

    def replication_intact(self) -> bool:
        """The shadow stayed attached for the whole run (no commit timeout, no loss)."""
        time.sleep(0.3)  # one more status write
        stats = self.pair.status("a").replication
        return stats is not None and stats.shadow_attached and not stats.commit_timeouts and not stats.shadow_losses


def pair_front(output_commit: bool) -> Any:
    @contextlib.contextmanager
    def front(members: list[Address], workdir: Path) -> Iterator[PairFront]:
        service = ("127.0.0.1", free_port())
        with LoopbackPair(service, members, workdir, output_commit=output_commit, probe_interval_ms=1000) as pair:
            yield PairFront(pair)

    return front


#: Solo as bare as the pair's nodes (no call records, no metrics endpoint): like against like.
FRONTS = {"solo": functools.partial(alg_front, features=False), "commit-on": pair_front(True),
          "commit-off": pair_front(False)}  # fmt: skip


# -- CPU side by side ----------------------------------------------------------------------------


def side_by_side(rates: tuple[int, ...], rounds: int, seconds: float, root: Path) -> dict[str, Any]:
    """Per rate, `rounds` rounds of solo, commit on and commit off back to back, so that each
    ratio compares runs minutes apart at most (the capacity climb runs each mode's whole
    ladder in turn, and this machine's speed drifts over that time). The ratios are medians
    over the rounds of each round's own ratio."""
    result: dict[str, Any] = {"rounds": rounds}
    for rate in rates:
        per_round: list[dict[str, Any]] = []
        for index in range(rounds):
            runs = {name: trial(FRONTS[name], rate, seconds, root / f"side-{rate}-{index}-{name}", 2)
                    for name in FRONTS}  # fmt: skip
            solo = runs["solo"]["front_cpu_s_per_1000_calls"]
            row: dict[str, Any] = {"solo": solo, "all_passed": all(run["passed"] for run in runs.values())}
            for name in ("commit-on", "commit-off"):
                primary, shadow = runs[name]["front_cpu_s_per_1000_calls"], runs[name]["shadow_cpu_s_per_1000_calls"]
                row[name] = {
                    "primary": primary,
                    "shadow": shadow,
                    "primary_over_solo": round(primary / solo, 3) if primary and solo else None,
                    "shadow_over_primary": round(shadow / primary, 3) if primary and shadow else None,
                }
            log(f"side by side {rate} cps, round {index + 1}: {row}")
            per_round.append(row)
        medians = {
            f"{name}_{ratio}": statistics.median(r[name][ratio] for r in per_round if r[name][ratio] is not None)
            for name in ("commit-on", "commit-off")
            for ratio in ("primary_over_solo", "shadow_over_primary")
        }
        result[str(rate)] = {"rounds": per_round, "medians": medians}
    return result


# -- response time ----------------------------------------------------------------------------


def latency(name: str, rate: int, seconds: float, root: Path) -> dict[str, Any]:
    """OPTIONS round trips through the front while SIPp runs `rate` calls/s."""
    workdir = root / f"latency-{name}"
    workdir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        members = [stack.enter_context(SippUas(workdir, name=f"uas{i}", timeout=seconds + 60)) for i in range(2)]
        front = stack.enter_context(FRONTS[name]([m.address for m in members], workdir))
        uac = SippUac(front.listen, workdir, calls=int(rate * seconds), rate=rate, extra_args=["-nr"],
                      timeout=seconds + 30)  # fmt: skip
        uac.start()
        time.sleep(1.0)
        pinger = Pinger(front.listen, interval_s=0.01)
        pinger.start()
        time.sleep(seconds - 2.0)
        pinger.stop()
        result = uac.wait()
    rtts = sorted((answered - sent) * 1000 for sent, answered in pinger.samples)
    return {
        "rate_cps": rate,
        "calls_failed": result.failed_calls,
        "samples": len(rtts),
        "median_ms": round(statistics.median(rtts), 3),
        "p99_ms": round(nearest_rank(rtts, 0.99), 3),
    }


# -- takeover ---------------------------------------------------------------------------------


def takeover_trials(trials: int, root: Path) -> dict[str, Any]:
    """SIGKILL the primary of a synced pair; time from the kill to the next answered OPTIONS."""
    times_ms: list[float] = []
    for index in range(trials):
        workdir = root / f"takeover-{index}"
        workdir.mkdir(parents=True)
        with contextlib.ExitStack() as stack:
            members = [stack.enter_context(SippUas(workdir, name=f"uas{i}", timeout=60)) for i in range(2)]
            pair = stack.enter_context(
                LoopbackPair(("127.0.0.1", free_port()), [m.address for m in members], workdir)
            )
            pinger = Pinger(pair.service, interval_s=0.001, timeout_s=0.05)
            pinger.start()
            time.sleep(0.3)
            killed_at = pair.kill("a")
            pair.wait_for_primary("b", timeout_s=5.0)
            time.sleep(0.1)
            pinger.stop()
        answered = [at for _, at in pinger.samples if at > killed_at]
        times_ms.append(round((answered[0] - killed_at) * 1000, 2))
        log(f"takeover trial {index + 1}: {times_ms[-1]} ms")
    ordered = sorted(times_ms)
    return {
        "trials": trials,
        "heartbeat": "10 ms interval, 4 misses (the defaults)",
        "median_ms": round(statistics.median(ordered), 2),
        "p99_ms": nearest_rank(ordered, 0.99),
        "max_ms": ordered[-1],
        "all_ms": times_ms,
    }


# -- soak -------------------------------------------------------------------------------------


def soak(minutes: float, rate: int, root: Path) -> dict[str, Any]:
    """RSS of both nodes every 10 s over `minutes`; the shadow is down for the middle fifth."""
    workdir = root / "soak"
    workdir.mkdir()
    seconds = minutes * 60
    samples: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        members = [stack.enter_context(SippUas(workdir, name=f"uas{i}", timeout=seconds + 120)) for i in range(2)]
        pair = stack.enter_context(LoopbackPair(("127.0.0.1", free_port()), [m.address for m in members], workdir))
        uac = SippUac(pair.service, workdir, calls=int(rate * seconds), rate=rate, extra_args=["-nr", "-d", "5000"],
                      timeout=seconds + 60, recv_timeout=10.0)  # fmt: skip
        uac.start()
        started = time.monotonic()
        shadow_down = (seconds * 0.4, seconds * 0.6)
        phase = "up"
        while uac.running():
            elapsed = time.monotonic() - started
            if phase == "up" and elapsed >= shadow_down[0]:
                pair.kill("b")
                phase = "down"
            elif phase == "down" and elapsed >= shadow_down[1]:
                pair.restart("b")
                phase = "rejoined"
            rss = {name: _rss_mb(node.pid) for name, node in pair.nodes.items()}
            samples.append({"t_s": round(elapsed), "shadow": phase, **rss})
            log(f"soak {samples[-1]}")
            time.sleep(10.0)
        result = uac.wait()
        replication = pair.status("a").replication
    primary = [s["a"] for s in samples if s["a"] is not None]
    return {
        "minutes": minutes,
        "rate_cps": rate,
        "calls_failed": result.failed_calls,
        "calls_successful": result.successful_calls,
        "primary_rss_mb": {"first": primary[0], "max": max(primary), "last": primary[-1]},
        "primary_replication": None if replication is None else {
            key: getattr(replication, key) for key in ("snapshots_sent", "joins", "join_timeouts", "shadow_losses",
                                                       "commit_timeouts", "last_snapshot_ms", "shadow_attached")
        },
        "samples": samples,
    }  # fmt: skip


def _rss_mb(pid: int) -> float | None:
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.NoSuchProcess:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each rate step")
    parser.add_argument("--ladder", type=lambda text: tuple(int(x) for x in text.split(",")), default=LADDER)
    parser.add_argument("--latency-rate", type=int, default=500)
    parser.add_argument("--takeover-trials", type=int, default=20)
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--soak-rate", type=int, default=0, help="default: half the solo capacity measured")
    parser.add_argument("--skip", default="", help="comma list of: overhead,side,latency,takeover")
    parser.add_argument("--side-rates", type=lambda text: tuple(int(x) for x in text.split(",")), default=(500, 1000),
                        help="rates of the side-by-side CPU rounds")  # fmt: skip
    parser.add_argument("--side-rounds", type=int, default=3)
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    report: dict[str, Any] = {"benchmark": "replication", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="sipshadow-replication-") as tmp:
        root = Path(tmp)
        if "overhead" not in skip:
            report["overhead"] = {
                name: capacity(name, factory, 2, args.ladder, args.seconds, root) for name, factory in FRONTS.items()
            }
            solo = report["overhead"]["solo"]["max_zero_failure_cps"] or 1
            report["overhead"]["rate_lost_with_commit_on"] = round(
                1 - report["overhead"]["commit-on"]["max_zero_failure_cps"] / solo, 3
            )
        if "side" not in skip:
            report["side_by_side"] = side_by_side(args.side_rates, args.side_rounds, args.seconds, root)
        if "latency" not in skip:
            report["latency"] = {name: latency(name, args.latency_rate, args.seconds, root) for name in FRONTS}
            solo_median = report["latency"]["solo"]["median_ms"]
            for name in ("commit-on", "commit-off"):
                report["latency"][name]["added_median_ms"] = round(
                    report["latency"][name]["median_ms"] - solo_median, 3
                )
        if "takeover" not in skip:
            report["takeover"] = takeover_trials(args.takeover_trials, root)
        if args.soak_minutes:
            solo_capacity = report.get("overhead", {}).get("solo", {}).get("max_zero_failure_cps", 1000)
            report["soak"] = soak(args.soak_minutes, args.soak_rate or max(50, solo_capacity // 2), root)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
