"""`sipshadow lab experiment`: the paper's Figure 2, reproduced on the namespace test bed.

For each HA mode and call rate, SIPp in the client namespace places calls of fixed duration
with no retransmissions (`-nr`); the primary ALG fails (its links go down: a fail-stop crash)
`fail_at` seconds after the calls start; SIPp's own statistics give the calls that failed.

Active calls (the paper's denominator): every call placed that had not already completed
when the primary failed, i.e. the calls up at the failure plus the calls offered after it.
With the default call duration (>= fail_at) no call completes before the failure, so every
call placed is active. Loss ratio = failed calls / active calls.

Call records (`records`: "sqlite", the default, or "postgres", a real server the experiment
starts, or "off"): both nodes of a bed write to one store; after the run, the journals the
nodes left are flushed (as a restarted node would) and the store is checked against SIPp:
one record per call placed, each call SIPp completed with its answer and its BYE, no Call-ID
recorded twice (`check_records`).
"""

from __future__ import annotations

import contextlib
import csv
import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sipshadow.lab.bed.testbed import down_all
from sipshadow.lab.netns_lab import NetnsLab
from sipshadow.lab.postgres import PostgresServer
from sipshadow.lab.report import series_name
from sipshadow.lab.sipp import SippResult, read_stat_rows
from sipshadow.runtime.config import HA_MODES

MODES = HA_MODES
#: The experiment's transports and SIPp's -t for each: UDP; TCP with a connection per call
#: (tn); TCP with one connection for every call (t1).
TRANSPORTS = {"udp": "u1", "tcp": "tn", "tcp1": "t1"}
#: Over TCP, SIPp 3.6 ends the whole run at the first connection reset: its reconnection path
#: fails ("Unable to get a SCTP socket") whatever -max_reconnect says. A cold standby resets
#: the connections it does not know, so network mode over TCP loses every active call here.
CSV_FIELDS = (
    "transport", "mode", "rate_cps", "repeat", "calls_attempted", "calls_active", "calls_failed", "loss_ratio",
    "failover_ms", "records_expected", "records_written", "records_duplicates", "records_missing",
    "records_unbilled", "records_absorbed",
)  # fmt: skip
#: Where the experiment's call records go: a SQLite file per bed, a PostgreSQL database per
#: bed on one real server the experiment runs, or nowhere.
RECORD_STORES = ("sqlite", "postgres", "off")


@dataclass(frozen=True)
class ExperimentConfig:
    modes: tuple[str, ...] = MODES
    rates: tuple[int, ...] = (20, 50, 100, 200)
    call_duration_s: float = 4.0
    fail_at_s: float = 3.0
    #: Calls are offered this long after the failure: 22 s in all, so that, as in the paper, most
    #: active calls come after the failure (network mode then loses the paper's share, not 2/3).
    after_failure_s: float = 19.0
    repeat: int = 3
    members: str = "sipp"
    parallel: int = 4
    fault: str = "crash"
    out: Path = Path("runs/experiment")
    transports: tuple[str, ...] = ("udp",)
    #: Beds run at once only while their call rates add up to this (a bed alone may exceed it):
    #: a 2-core machine running four beds at 200 cps starves the replicas it measures.
    rate_budget_cps: int = 300
    records: str = "sqlite"


@dataclass
class RunResult:
    mode: str
    rate_cps: int
    repeat: int
    transport: str = "udp"
    calls_attempted: int = 0
    calls_active: int = 0
    calls_failed: int = 0
    loss_ratio: float = 0.0
    failover_ms: float | None = None
    error: str = ""
    failure_causes: dict[str, int] = field(default_factory=dict)
    #: The start of SIPp's error log when a run with HA lost calls: what a failed run shows.
    sipp_errors: str = ""
    #: Call records against SIPp (`check_records`): calls placed; records in the store;
    #: records beyond one per Call-ID; calls placed with no record; calls SIPp completed whose
    #: record is missing or incomplete (no answer time, or not ended by a BYE). None: records off.
    records_expected: int | None = None
    records_written: int | None = None
    records_duplicates: int | None = None
    records_missing: int | None = None
    records_unbilled: int | None = None
    #: Records the store already had when a node (or the flush) wrote them: a takeover's
    #: re-issue of what the old primary may not have released, absorbed by the store's identity.
    records_absorbed: int | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CSV_FIELDS}


#: Characters of SIPp's error log kept for a run with HA that lost calls.
SIPP_ERRORS_SHOWN = 3000


class Aborted(Exception):
    """Ctrl-C: stop every run and tear every bed down."""


class Runner:
    """Runs the grid of (mode, rate, repeat), a few beds at a time, and remembers their prefixes."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.prefixes: set[str] = set()
        self.aborted = threading.Event()
        self._lock = threading.Lock()
        #: The PostgreSQL server the runs write records to (`records = "postgres"`), started by
        #: `run_experiment`.
        self.postgres: PostgresServer | None = None

    def records_store(self, name: str, workdir: Path) -> str | None:
        """Where the run `name` writes call records: its own SQLite file or database."""
        if self.config.records == "sqlite":
            return str(workdir / "records.sqlite")
        if self.config.records == "postgres" and self.postgres is not None:
            database = name.replace("-", "_")
            self.postgres.create_database(database)
            return self.postgres.socket_dsn(database)
        return None

    def grid(self) -> list[tuple[str, int, int, str]]:
        c = self.config
        return [
            (mode, rate, repeat, transport)
            for repeat in range(1, c.repeat + 1)
            for rate in c.rates
            for transport in c.transports
            for mode in c.modes
        ]

    def run_one(self, mode: str, rate: int, repeat: int, transport: str = "udp") -> RunResult:
        c = self.config
        result = RunResult(mode, rate, repeat, transport)
        suffix = "" if transport == "udp" else f"-{transport}"
        workdir = c.out / "runs" / f"{mode}-{rate}cps-{repeat}{suffix}"
        step = "bring up the test bed"
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "records.sqlite").unlink(missing_ok=True)  # a previous experiment's
            store = self.records_store(workdir.name, workdir)
            lab = NetnsLab(workdir, mode=mode, members=c.members, records=store)
            with self._lock:
                self.prefixes.add(lab.testbed.prefix)
            if self.aborted.is_set():
                raise Aborted
            with lab:
                step = "start the calls"
                calls = max(1, round(rate * (c.fail_at_s + c.after_failure_s)))
                uac = lab.client_uac(calls, rate, call_ms=round(c.call_duration_s * 1000), recv_timeout=2.0,
                                     timeout=c.fail_at_s + c.after_failure_s + c.call_duration_s + 30,
                                     transport=TRANSPORTS[transport])  # fmt: skip
                uac.start()
                step = "fail the primary"
                self._sleep(c.fail_at_s)
                lab.fail(c.fault)
                fault_wall = time.time()
                step = "wait for the calls to end"
                sipp = uac.wait()
                step = "collect the results"
                result.failover_ms = failover_ms(lab, fault_wall) if mode != "none" else None
                fill(result, sipp, fault_wall)
                if mode != "none" and result.calls_failed:
                    result.sipp_errors = sipp.errors_text()[:SIPP_ERRORS_SHOWN]
            if store is not None:
                step = "check the call records"
                _, flushed_again = lab.flush_records()
                check_records(result, store, sipp)
                result.records_absorbed = flushed_again + lab.records_absorbed()
        except Aborted:
            result.error = "aborted"
        except Exception as error:  # a failed run is reported with its step, and the grid goes on
            result.error = f"{step}: {type(error).__name__}: {error}"
        return result

    def _sleep(self, seconds: float) -> None:
        if self.aborted.wait(seconds):
            raise Aborted

    def abort(self) -> None:
        self.aborted.set()
        with self._lock:
            for prefix in self.prefixes:
                down_all(prefix)


def failover_ms(lab: NetnsLab, fault_wall: float) -> float | None:
    """From the fault to the shadow serving as primary, by the shadow's own clock (same host)."""
    try:
        ha = lab.nodes["shadow"].status().ha
    except (OSError, ValueError):
        return None
    serving_at = ha.takeovers[-1].serving_at if ha is not None and ha.takeovers else None
    return None if serving_at is None else round((serving_at - fault_wall) * 1000, 1)


def fill(result: RunResult, sipp: SippResult, fault_wall: float) -> None:
    result.calls_attempted = sipp.total_calls
    done_before = completed_before(sipp, fault_wall)
    result.calls_active = max(0, sipp.total_calls - done_before)
    result.calls_failed = sipp.failed_calls + (sipp.total_calls - sipp.successful_calls - sipp.failed_calls)
    result.loss_ratio = round(result.calls_failed / result.calls_active, 4) if result.calls_active else 0.0
    result.failure_causes = sipp.failure_causes


def check_records(result: RunResult, store: str, sipp: SippResult) -> None:
    """The store's records against SIPp's counts (SIPp's Call-IDs are distinct per call)."""
    from sipshadow.records.stores import open_store

    records = open_store(store).read()
    call_ids = {record.call_id for record in records}
    complete = {record.call_id for record in records if record.answered_at is not None and record.end_reason == "bye"}
    result.records_expected = sipp.total_calls
    result.records_written = len(records)
    result.records_duplicates = len(records) - len(call_ids)
    result.records_missing = max(0, sipp.total_calls - len(call_ids))
    result.records_unbilled = max(0, sipp.successful_calls - len(complete))


def completed_before(sipp: SippResult, fault_wall: float) -> int:
    """Calls SIPp had counted successful at the last statistics row before the failure."""
    done = 0
    for row in read_stat_rows(sipp.stat_file):
        stamp = row.get("CurrentTime", "").split("\t")[-1]
        with contextlib.suppress(ValueError):
            if float(stamp) <= fault_wall:
                done = int(row.get("SuccessfulCall(C)", "0") or 0)
    return done


def write_csv(path: Path, results: list[RunResult]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        order = list(TRANSPORTS)
        for result in sorted(results, key=lambda r: (order.index(r.transport), MODES.index(r.mode), r.rate_cps,
                                                     r.repeat)):  # fmt: skip
            writer.writerow(result.row())


def run_grid(runner: Runner, on_done: Any) -> list[RunResult]:
    """Run every cell of the grid, at most `parallel` beds at a time and, beyond the first, only
    while their rates fit `rate_budget_cps` (first fit, in grid order); `on_done(result)` after each."""
    config = runner.config
    pending = runner.grid()
    results: list[RunResult] = []
    running: dict[Future[RunResult], int] = {}
    with ThreadPoolExecutor(max_workers=config.parallel) as pool:
        try:
            while pending or running:
                load = sum(running.values())
                for cell in list(pending):
                    if len(running) >= config.parallel:
                        break
                    rate = cell[1]
                    if running and load + rate > config.rate_budget_cps:
                        continue
                    pending.remove(cell)
                    running[pool.submit(runner.run_one, *cell)] = rate
                    load += rate
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    results.append(future.result())
                    on_done(results[-1])
        except KeyboardInterrupt:
            runner.abort()
            for future in running:
                future.cancel()
            raise
    return results


def summary(results: list[RunResult]) -> dict[str, dict[int, dict[str, float]]]:
    """Mean and standard deviation of the loss ratio per series (mode, and transport when not
    UDP: `report.series_name`) and rate."""
    import statistics

    table: dict[str, dict[int, dict[str, float]]] = {}
    for transport, mode in ((t, m) for t in TRANSPORTS for m in MODES):
        for rate in sorted({r.rate_cps for r in results}):
            cell = [r for r in results if (r.transport, r.mode, r.rate_cps) == (transport, mode, rate)]
            ratios = [r.loss_ratio for r in cell if not r.error]
            failovers = [r.failover_ms for r in cell if r.failover_ms]
            if ratios:
                table.setdefault(series_name(mode, transport), {})[rate] = {
                    "mean": statistics.fmean(ratios),
                    "stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
                    "runs": len(ratios),
                    "failover_ms": statistics.median(failovers) if failovers else float("nan"),
                }
    return table


def as_dict(config: ExperimentConfig) -> dict[str, Any]:
    data = asdict(config)
    data["out"] = str(config.out)
    return data


def failure_free_cost(
    config: ExperimentConfig, rates: tuple[int, ...] = (500, 1000, 2000, 3000), seconds: float = 4.0
) -> dict[str, Any]:
    """No HA vs active replication without a failure: zero-failure rate and response time."""
    import statistics

    from sipshadow.lab.pinger import PingerProcess

    cost: dict[str, Any] = {}
    for mode in ("none", "active"):
        best, rtts = 0, []
        for rate in rates:
            with NetnsLab(config.out / "runs" / f"cost-{mode}-{rate}cps", mode=mode, members=config.members) as lab:
                pinger = PingerProcess(lab.service, lab.testbed.ns_name("client"), lab.workdir / "pinger.jsonl",
                                       interval_ms=10).start()  # fmt: skip
                sipp = (
                    lab.client_uac(round(rate * seconds), rate, recv_timeout=2.0, timeout=seconds + 30).start().wait()
                )
                samples = pinger.stop()
            if rate == rates[0]:
                rtts = [(s["answered"] - s["sent"]) * 1000 for s in samples]
            if sipp.failed_calls or sipp.successful_calls < round(rate * seconds):
                break
            best = rate
        cost[mode] = {"max_zero_failure_cps": best, "median_response_ms": statistics.median(rtts) if rtts else math.nan,
                      "ladder": list(rates), "seconds_per_step": seconds}  # fmt: skip
    return cost


def run_experiment(config: ExperimentConfig, *, measure_cost: bool = True) -> int:
    """The whole experiment with a progress bar; writes results.csv, figure.png, report.md."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from sipshadow.lab.report import draw_figure, write_report

    console = Console(stderr=True)
    config.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(config)
    started = time.monotonic()
    errors: list[str] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("failover runs", total=len(runner.grid()))

            def done(result: RunResult) -> None:
                progress.advance(task)
                label = f"{series_name(result.mode, result.transport)} {result.rate_cps} cps #{result.repeat}"
                if result.error:
                    errors.append(f"{label}: {result.error} (logs in {config.out / 'runs'})")
                    progress.console.print(f"[red]{label} failed at step: {result.error}")
                else:
                    progress.console.print(f"{label}: {result.calls_failed}/{result.calls_active} active calls lost, "
                                           f"failover {result.failover_ms} ms")  # fmt: skip
                    if result.sipp_errors:  # a loss with HA on is a bug to chase: say what SIPp saw
                        progress.console.print(f"{label}: causes {result.failure_causes}; SIPp's errors begin:",
                                               result.sipp_errors, markup=False, highlight=False)  # fmt: skip

            with contextlib.ExitStack() as stack:
                if config.records == "postgres":
                    runner.postgres = stack.enter_context(PostgresServer())
                results = run_grid(runner, done)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every test bed torn down; partial logs kept in " + str(config.out))
        return 130
    write_csv(config.out / "results.csv", results)
    table = summary(results)
    cost = None
    if measure_cost:
        console.print("failure-free cost: no HA vs active, side by side …")
        try:
            cost = failure_free_cost(config)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted during the cost measurement")
            return 130
    if table:
        draw_figure(table, config.out / "figure.png")
    write_report(config.out / "report.md", table, as_dict(config), time.monotonic() - started, errors, cost,
                 records=[result.row() for result in results if result.records_expected is not None])
    console.print((config.out / "report.md").read_text())
    return 1 if errors else 0
