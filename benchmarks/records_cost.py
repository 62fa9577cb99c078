"""What call records cost: a solo node's CPU per 1000 calls with records off, to SQLite, to PostgreSQL; JSON out.

For each rate, the three cases run side by side in one run, interleaved (off, sqlite, postgres,
off, ...) so that whatever else loads the machine hits all three alike. Every step is a fresh
node in front of 2 SIPp UAS members, all on loopback, and a SIPp UAC run at the rate for
`--seconds` with no retransmissions (`-nr`). The node's CPU is its process total, so it
includes the record writer thread; it is taken once the records have settled (the journal
drained into the store), so the writer's share of a step is all in it. The records cases then
read the store back: every successful call must have its record (end_reason "bye"). The
PostgreSQL server (one real, throwaway server for the whole run, a fresh database per step)
is measured on its own: the CPU of all its processes, per 1000 calls, beside the node's.

    .venv/bin/python benchmarks/records_cost.py                       # 500 and 1000 cps, 15 s steps
    .venv/bin/python benchmarks/records_cost.py --quick               # a smoke run: 200 cps, 5 s
    .venv/bin/python benchmarks/records_cost.py --rates 500,1000,1500 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from harness import ALG_CONFIG, log, machine, per_1000
from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.postgres import PostgresServer, missing_reason
from sipshadow.lab.sipp import SippUac, SippUas, free_port
from sipshadow.records.stores import open_store

CASES = ("off", "sqlite", "postgres")
#: After the UAC ends, wait at most this long (s) for the records to reach the store.
SETTLE_MAX_WAIT_S = 30.0
#: Dialogs linger this long (s) after their BYE, as in the other benchmarks.
LINGER_S = 2.0


def postgres_cpu_seconds(server: PostgresServer) -> float:
    """User + system CPU of the whole server: the postmaster, its live children, and the
    children it has already reaped (a backend that ended during the step still counts)."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    total = 0.0
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    times = postmaster.cpu_times()
    return total + times.user + times.system + times.children_user + times.children_system


def database_dsn(server: PostgresServer, name: str) -> str:
    return f"{server.dsn.rsplit('/', 1)[0]}/{name}"


def node_config(case: str, workdir: Path, target: str | None) -> str:
    config = ALG_CONFIG.format(linger=LINGER_S)
    if case == "sqlite":
        config += f'[cdr]\nstore = "{target}"\n'  # the journal: the default, STORE.journal
    elif case == "postgres":
        config += f'[cdr]\nstore = "{target}"\njournal = "{workdir / "cdr.journal"}"\n'
    return config


def settle(node: AlgProcess, successful: int) -> tuple[bool, Any]:
    """Wait (bounded) until the node has made a record per successful call and the store has
    taken every record it was given; returns whether it did, and the last status read."""
    deadline = time.monotonic() + SETTLE_MAX_WAIT_S
    while True:
        status = node.status()
        records = status.records
        if records is None:  # records off: nothing to wait for
            return True, status
        made = status.counters.call_records if status.counters is not None else 0
        if made >= successful and records.submitted >= made and records.pending_bytes == 0 and \
                records.written + records.duplicates == records.submitted:  # fmt: skip
            return True, status
        if time.monotonic() >= deadline:
            return False, status
        time.sleep(0.2)


def read_back(target: str) -> dict[str, int]:
    """What the store holds: all records, distinct calls, and those ended by a BYE."""
    store = open_store(target)
    try:
        records = store.read()
    finally:
        store.close()
    return {
        "records_in_store": len(records),
        "distinct_call_ids": len({record.call_id for record in records}),
        "records_ended_by_bye": sum(record.end_reason == "bye" for record in records),
    }


def step(
    case: str, rate: int, seconds: float, workdir: Path, server: PostgresServer | None, index: int
) -> dict[str, Any]:
    """One fresh node with records `case`, SIPp at `rate` for `seconds`, then the records read back."""
    calls = int(rate * seconds)
    workdir.mkdir(parents=True)
    target: str | None = None
    if case == "sqlite":
        target = str(workdir / "cdr.sqlite")
    elif case == "postgres":
        assert server is not None
        database = f"records_{rate}_{index}"
        server.create_database(database)  # before the node starts: its backend's CPU is not the step's
        target = database_dsn(server, database)
    uas = [SippUas(workdir, name=f"uas{i}", timeout=seconds + 120) for i in range(2)]
    with contextlib.ExitStack() as stack:
        for member in uas:
            stack.enter_context(member)
        node = stack.enter_context(
            AlgProcess(("127.0.0.1", free_port()), [m.address for m in uas], workdir,
                       config_text=node_config(case, workdir, target))
        )  # fmt: skip
        time.sleep(0.5)  # the node's start-up work is not the step's
        cpu_before = node.cpu_seconds()
        server_before = postgres_cpu_seconds(server) if case == "postgres" and server else None
        started = time.monotonic()
        uac = SippUac(
            node.listen, workdir, calls=calls, rate=rate, extra_args=["-nr", "-l", str(rate * 10)],
            timeout=seconds + 60, recv_timeout=5.0,
        )  # fmt: skip
        result = stack.enter_context(uac).wait()  # in the stack: stopped too on Ctrl-C or SIGTERM
        elapsed = time.monotonic() - started
        cpu_at_uac_end = node.cpu_seconds()
        settled, status = settle(node, result.successful_calls)
        settle_wait = time.monotonic() - started - elapsed
        cpu_after = node.cpu_seconds()
        server_after = postgres_cpu_seconds(server) if case == "postgres" and server else None
    outcome: dict[str, Any] = {
        "case": case,
        "rate_cps": rate,
        "calls": calls,
        "successful": result.successful_calls,
        "failed": result.failed_calls,
        "failed_per_10k": round((calls - result.successful_calls) / calls * 1e4, 1),
        "failure_causes": result.failure_causes,
        "achieved_cps": round(result.successful_calls / elapsed, 1) if elapsed else None,
        "node_cpu_s_per_1000_calls": per_1000(cpu_before, cpu_after, calls),
        "node_cpu_s_per_1000_calls_at_uac_end": per_1000(cpu_before, cpu_at_uac_end, calls),
        "settle_wait_s": round(settle_wait, 2),
    }
    if target is not None:
        records = status.records
        outcome |= {
            "settled": settled,
            "records_made": status.counters.call_records if status.counters is not None else None,
            "records_status": None if records is None else msgspec.structs.asdict(records),
            **read_back(target),
        }
        outcome["missing"] = result.successful_calls - outcome["records_ended_by_bye"]
    if case == "postgres":
        outcome["postgres_server_cpu_s_per_1000_calls"] = per_1000(server_before, server_after, calls)
    return outcome


def median_of(steps: list[dict[str, Any]], rate: int, case: str, key: str) -> float | None:
    values = [s[key] for s in steps if s["rate_cps"] == rate and s["case"] == case and s.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(steps: list[dict[str, Any]], rates: tuple[int, ...], cases: tuple[str, ...]) -> dict[str, Any]:
    cpu = {str(rate): {case: median_of(steps, rate, case, "node_cpu_s_per_1000_calls") for case in cases}
           for rate in rates}  # fmt: skip
    ratio: dict[str, dict[str, float | None]] = {}
    for rate, by_case in cpu.items():
        off = by_case.get("off")
        ratio[rate] = {}
        for case in cases[1:]:
            value = by_case[case]
            ratio[rate][case] = round(value / off, 3) if off and value is not None else None
    summary: dict[str, Any] = {"cpu_per_1000_s": cpu, "overhead_ratio": ratio}
    if "postgres" in cases:
        summary["postgres_server_cpu_per_1000_s"] = {
            str(rate): median_of(steps, rate, "postgres", "postgres_server_cpu_s_per_1000_calls") for rate in rates
        }
    summary["missing_records"] = sum(s.get("missing", 0) for s in steps)
    return summary


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    reason = missing_reason()
    cases = CASES if reason is None else CASES[:2]
    report: dict[str, Any] = {
        "benchmark": "records_cost",
        "seconds_per_step": args.seconds,
        "rates": list(args.rates),
        "repeat": args.repeat,
        "machine": machine(),
    }
    if reason is not None:
        log(f"postgres case skipped: {reason}")
        report["postgres"] = {"skipped": reason}
    steps: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(PostgresServer()) if "postgres" in cases else None
        for rate in args.rates:
            for index in range(args.repeat):
                for case in cases:
                    outcome = step(case, rate, args.seconds, root / f"{rate}-{index}-{case}", server, index)
                    log(f"{case:8s} {rate:5d} cps #{index + 1}: {outcome['successful']} ok, {outcome['failed']} "
                        f"failed, node {outcome['node_cpu_s_per_1000_calls']} s/1000"
                        + (f", {outcome['records_ended_by_bye']} records, {outcome['missing']} missing"
                           if "missing" in outcome else "")
                        + (f", server {outcome['postgres_server_cpu_s_per_1000_calls']} s/1000"
                           if case == "postgres" else ""))  # fmt: skip
                    steps.append(outcome)
    report["steps"] = steps
    report["summary"] = summarise(steps, args.rates, cases)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --quick changes the defaults of --rates and --seconds; an explicit value wins.
    parser.add_argument("--rates", type=lambda text: tuple(int(x) for x in text.split(",")),
                        help="call rates (cps), comma separated (default 500,1000)")  # fmt: skip
    parser.add_argument("--seconds", type=float, help="length of each step (default 15)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three cases per rate")
    parser.add_argument("--out", type=Path, help="where the steps' workdirs go (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: by default 200 cps, 5 s steps")
    args = parser.parse_args()
    defaults = ((200,), 5.0) if args.quick else ((500, 1000), 15.0)
    for option, default in zip(("rates", "seconds"), defaults, strict=True):
        if getattr(args, option) is None:
            setattr(args, option, default)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="records-cost-", dir=args.out))
        log(f"workdirs in {root}")
        report = run(args, root)
    else:
        with tempfile.TemporaryDirectory(prefix="sipshadow-records-cost-") as tmp:
            report = run(args, Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
