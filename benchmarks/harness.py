"""Shared machinery of the rate benchmarks: fresh processes per step, a ladder, CPU, machine."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.report import versions
from sipshadow.lab.sipp import SippUac, SippUas, free_port

LADDER = (500, 1000, 1500, 2000, 2500, 3000, 3500, 4000)
Front = Callable[[list[tuple[str, int]], Path], contextlib.AbstractContextManager[Any]]

#: A benchmark transport -> SIPp's -t for the UAC and for the members (SippUas).
#: "udp": one UDP socket each. "tcp": the UAC opens a TCP connection per call (tn), the
#: members accept TCP (t1). "tcp1": the UAC carries every call on one TCP connection.
SIPP_TRANSPORTS: dict[str, tuple[str, str]] = {"udp": ("u1", "u1"), "tcp": ("tn", "t1"), "tcp1": ("t1", "t1")}

#: Before a TCP step, wait (at most SETTLE_MAX_WAIT_S) until fewer than this many loopback
#: ephemeral ports hold a socket in TIME_WAIT. SIPp closes its end of a call's connection first, so every
#: call leaves one for 60 s; SIPp's -t tn binds each new connection to 127.0.0.1:0, and that
#: bind() costs milliseconds once a few thousand such ports are taken: a step that inherits the
#: previous step's (or path's) would be throttled by the UAC, not by the path under test.
SETTLE_TIME_WAIT = 1000
SETTLE_MAX_WAIT_S = 75.0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# Every benchmark imports this module: a SIGTERM (a timeout, a kill) then unwinds like Ctrl-C,
# so the `with` blocks stop the nodes and SIPp instead of leaving them running.
signal.signal(signal.SIGTERM, _interrupt)


ALG_CONFIG = (
    "[health]\nprobe_interval_ms = 1000\n[dialogs]\nterminated_linger_s = {linger}\n[status]\ninterval_s = 0.5\n"
)
#: What a production node also runs, on by default in the rate benchmarks (issue 16: the CPU per
#: call is compared with every landed feature on): call records into SQLite, a Prometheus endpoint.
FEATURES_CONFIG = '[cdr]\nstore = "{workdir}/cdr.sqlite"\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
#: The features alg_front turns on, for the JSON.
FEATURES = ("dialog identity", "call records (SQLite)", "metrics endpoint", "status file")


@contextlib.contextmanager
def direct_front(members: list[tuple[str, int]], workdir: Path) -> Iterator[Any]:
    """No proxy: the UAC talks straight to the first member."""
    yield None


def member_uris(members: list[tuple[str, int]], transport: str) -> list[tuple[str, int] | str]:
    """The ALG's members: (host, port) for UDP, `sip:HOST:PORT;transport=tcp` for the TCP transports."""
    if transport == "udp":
        return list(members)
    return [f"sip:{host}:{port};transport=tcp" for host, port in members]


@contextlib.contextmanager
def alg_front(
    members: list[tuple[str, int]], workdir: Path, linger: float = 2.0, transport: str = "udp", features: bool = True
) -> Iterator[AlgProcess]:
    """A solo `sipshadow serve`; `features`: with call records and metrics (FEATURES_CONFIG)."""
    extra = FEATURES_CONFIG.format(workdir=workdir, metrics_port=free_port()) if features else ""
    with AlgProcess(
        ("127.0.0.1", free_port()),
        member_uris(members, transport),
        workdir,
        config_text=ALG_CONFIG.format(linger=linger) + extra,
    ) as alg:
        yield alg


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loopback_time_wait() -> int | None:
    """127.0.0.1 ephemeral ports holding a TCP socket in TIME_WAIT (None when /proc cannot tell).

    Ports, not sockets: a server on an ephemeral port that closes first holds many on one port,
    which costs a bind() nothing.
    """
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except (OSError, ValueError):
        return None
    ports = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "06" and fields[1].startswith("0100007F:"):
            ports.add(int(fields[1][9:], 16))
    return sum(low <= port <= high for port in ports)


def settle_loopback(threshold: int = SETTLE_TIME_WAIT, max_wait_s: float = SETTLE_MAX_WAIT_S) -> dict[str, Any]:
    """Wait until the loopback TIME_WAIT left by earlier TCP steps drains below `threshold`."""
    started = time.monotonic()
    count = loopback_time_wait()
    while count is not None and count >= threshold and time.monotonic() - started < max_wait_s:
        time.sleep(1.0)
        count = loopback_time_wait()
    return {"settle_wait_s": round(time.monotonic() - started, 1), "loopback_time_wait_ports_at_start": count}


def target_of(front: Any, members: list[tuple[str, int]]) -> tuple[str, int]:
    """Where the UAC sends: the front's service address, or the first member when direct."""
    return members[0] if front is None else front.listen


def cpu_seconds(front: Any, which: str = "cpu_seconds") -> float | None:
    """CPU used so far by the front (user + system); None when there is none to measure."""
    measure = getattr(front, which, None)
    return None if measure is None else float(measure())


def cpu_times(front: Any) -> tuple[float, float] | None:
    """(user, system) CPU used so far by the front; None when there is none to measure."""
    measure = getattr(front, "cpu_times", None)
    return None if measure is None else measure()


def per_1000(before: float | None, after: float | None, calls: int) -> float | None:
    return None if before is None or after is None else round((after - before) / calls * 1000, 3)


def trial(
    front_factory: Front, rate: int, seconds: float, workdir: Path, member_count: int, transport: str = "udp"
) -> dict[str, Any]:
    """One fresh run at `rate` for `seconds`; the UAC's verdict and the front's CPU.

    `transport` (a key of SIPP_TRANSPORTS) sets SIPp's -t on both sides; the front factory
    must have been made for the same transport.
    """
    uac_transport, uas_transport = SIPP_TRANSPORTS[transport]
    calls = int(rate * seconds)
    workdir.mkdir(parents=True)
    settled = {} if transport == "udp" else settle_loopback()
    uas = [
        SippUas(workdir, name=f"uas{index}", timeout=seconds + 90, transport=uas_transport)
        for index in range(member_count)
    ]
    with contextlib.ExitStack() as stack:
        for member in uas:
            stack.enter_context(member)
        front = stack.enter_context(front_factory([member.address for member in uas], workdir))
        times_before = cpu_times(front)
        cpu_before, shadow_before = _total(front, times_before), cpu_seconds(front, "shadow_cpu_seconds")
        started = time.monotonic()
        uac = SippUac(
            target_of(front, [member.address for member in uas]), workdir, calls=calls, rate=rate,
            extra_args=["-nr", "-l", str(rate * 10)], timeout=seconds + 60, recv_timeout=5.0,
            transport=uac_transport,
        )  # fmt: skip
        stack.enter_context(uac)  # a SIGTERM mid-step stops the UAC too
        result = uac.wait()
        elapsed = time.monotonic() - started
        times_after = cpu_times(front)
        cpu_after, shadow_after = _total(front, times_after), cpu_seconds(front, "shadow_cpu_seconds")
        intact = front.replication_intact() if hasattr(front, "replication_intact") else None
    return {
        "rate_cps": rate,
        "calls": calls,
        "successful": result.successful_calls,
        "failed": result.failed_calls,
        "failure_causes": result.failure_causes,
        "achieved_cps": round(result.successful_calls / elapsed, 1) if elapsed else None,
        # With a shadow, a run only counts if the shadow kept up to the end (never dropped by the
        # commit deadline): otherwise the primary finished it solo.
        "passed": result.failed_calls == 0 and result.successful_calls == calls and intact is not False,
        "replication_intact": intact,
        "front_cpu_s_per_1000_calls": per_1000(cpu_before, cpu_after, calls),
        # the split: system time is the kernel's work for the front (its sends and receives)
        "front_user_s_per_1000_calls": per_1000(*_nth(times_before, times_after, 0), calls),
        "front_system_s_per_1000_calls": per_1000(*_nth(times_before, times_after, 1), calls),
        "shadow_cpu_s_per_1000_calls": per_1000(shadow_before, shadow_after, calls),
        "response_time_ms": {k: round(v * 1000, 2) for k, v in result.response_times_s.items()},
        **settled,
    }


def _total(front: Any, times: tuple[float, float] | None) -> float | None:
    """User + system from one reading of `times`, else the front's own total (a pair's)."""
    return sum(times) if times is not None else cpu_seconds(front)


def _nth(before: tuple[float, float] | None, after: tuple[float, float] | None,
         index: int) -> tuple[float | None, float | None]:  # fmt: skip
    return (None, None) if before is None or after is None else (before[index], after[index])


def capacity(
    name: str,
    front_factory: Front,
    members: int,
    ladder: tuple[int, ...],
    seconds: float,
    root: Path,
    collapse_ratio: float = 0.01,
    transport: str = "udp",
) -> dict[str, Any]:
    """Climb the ladder; the capacity is the last rate before the first failure.

    The climb goes on past a first failure while fewer than `collapse_ratio` of the calls
    fail, so a path that loses a few calls in ten thousand shows where it really collapses.
    """
    trials = []
    for rate in ladder:
        outcome = trial(front_factory, rate, seconds, root / f"{name}-{rate}", members, transport)
        causes = outcome["failure_causes"] or ""
        log(f"{name:10s} {rate:5d} cps: {outcome['successful']} ok, {outcome['failed']} failed {causes}")
        trials.append(outcome)
        if outcome["calls"] - outcome["successful"] > collapse_ratio * outcome["calls"]:
            break
    first_failure = next((index for index, t in enumerate(trials) if not t["passed"]), len(trials))
    best = trials[first_failure - 1] if first_failure else None
    return {
        "max_zero_failure_cps": best["rate_cps"] if best else 0,
        "cpu_s_per_1000_calls_at_max": best["front_cpu_s_per_1000_calls"] if best else None,
        "first_failing_cps": trials[first_failure]["rate_cps"] if first_failure < len(trials) else None,
        "failures_per_10k": {
            t["rate_cps"]: round((t["calls"] - t["successful"]) / t["calls"] * 1e4, 1) for t in trials
        },
        "trials": trials,
    }


def nearest_rank(ordered: list[float], quantile: float) -> float:
    """The nearest-rank percentile: with 20 samples, p99 is the largest."""
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


def machine() -> dict[str, Any]:
    return {"cpus": psutil.cpu_count(), **versions()}
