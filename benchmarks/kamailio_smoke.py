#!/usr/bin/env python3
"""Smoke test and rough ceiling for the Kamailio reference load balancer.

Topology (all UDP on 127.0.0.1): SIPp UAC -> Kamailio -> 2 SIPp UAS.
First a correctness run (2000 calls at 500 cps) proving calls complete and
both members get traffic; then short runs at rising rates to see where
Kamailio with N workers starts failing calls on this machine. Every process
is bounded (-m, -timeout) and killed by process group when a run ends.

Prints one JSON document on stdout; per-run artefacts (configs, SIPp stat
CSVs, Kamailio log) stay in --workdir for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

try:
    from sipshadow.lab.kamailio import KamailioProcess, Routing, kamailio_available
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from sipshadow.lab.kamailio import KamailioProcess, Routing, kamailio_available

HOST = "127.0.0.1"

# SIPp failure counters worth surfacing when a run is not clean.
FAILURE_COLUMNS = (
    "FailedCallRejected(C)",
    "FailedMaxUDPRetrans(C)",
    "FailedTcpConnect(C)",
    "FailedTcpClosed(C)",
    "FailedUnexpectedMessage(C)",
    "FailedCmdNotSent(C)",
    "FailedRegexpDoesntMatch(C)",
    "FailedRegexpShouldntMatch(C)",
    "FailedRegexpHdrNotFound(C)",
    "FailedOutboundCongestion(C)",
    "FailedTimeoutOnRecv(C)",
    "FailedTimeoutOnSend(C)",
    "OutOfCallMsgs(C)",
    "DeadCallMsgs(C)",
    "Retransmissions(C)",
)


def free_udp_ports(count: int) -> list[int]:
    """Ask the kernel for distinct free UDP ports (tiny race, fine for a lab)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def last_stat_row(path: Path) -> dict[str, str]:
    """Final cumulative row of a SIPp -trace_stat CSV (';'-separated)."""
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    if len(rows) < 2:
        return {}
    header = rows[0]
    return dict(zip(header, rows[-1], strict=False))


def offered_cps(path: Path) -> float | None:
    """Median per-second call rate while the UAC was still placing calls.

    Created/wall-time would understate it: the wall time includes the
    -recv_timeout tail of calls that lost a datagram.
    """
    if not path.exists():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    rates = []
    for row in rows:
        try:
            if int(row.get("OutgoingCall(P)") or 0) > 0:
                rates.append(float(row.get("CallRate(P)") or 0))
        except ValueError:
            continue
    return round(statistics.median(rates), 1) if rates else None


def count_late_provisionals(path: Path) -> int:
    """Calls SIPp aborted because a 180 arrived after the 200 OK.

    With several Kamailio UDP workers, the 180 and 200 of one INVITE can be
    handled by different processes and overtake each other. SIPp's uac
    scenario counts that as FailedUnexpectedMessage although signalling is
    otherwise fine, so it is worth telling apart from real losses.
    """
    if not path.exists():
        return 0
    text = path.read_text(errors="replace")
    marker = "Aborting call on unexpected message"
    return sum(1 for chunk in text.split(marker)[1:] if "received 'SIP/2.0 18" in chunk[:400])


def as_int(row: dict[str, str], key: str) -> int:
    """SIPp counters are integers; missing means the file was never written."""
    try:
        return int(row.get(key, "") or 0)
    except ValueError:
        return 0


def killpg_quietly(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Soft-stop a SIPp (SIGUSR1 lets it flush stats), then SIGKILL the group."""
    for sig, wait in ((signal.SIGUSR1, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # sweep SIPp's whole group
        os.killpg(proc.pid, signal.SIGKILL)


def start_uas(sipp: str, port: int, rundir: Path, name: str, timeout_s: int) -> subprocess.Popen[bytes]:
    """One SIPp UAS member; -timeout bounds it even if we die uncleanly."""
    out = open(rundir / f"{name}.out", "wb")  # noqa: SIM115 - handed to child
    try:
        return subprocess.Popen(
            [
                sipp,
                "-sn",
                "uas",
                "-i",
                HOST,
                "-p",
                str(port),
                "-nostdin",
                "-aa",
                "-trace_stat",
                "-stf",
                str(rundir / f"{name}.csv"),
                "-fd",
                "1",
                "-timeout",
                f"{timeout_s}s",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=rundir,
            start_new_session=True,
        )
    finally:
        out.close()


def wait_udp_bound(port: int, timeout: float = 5.0) -> bool:
    """SIPp binds asynchronously; wait until the port is taken."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
        finally:
            probe.close()
        time.sleep(0.05)
    return False


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a live process, read before we stop it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_drops_by_port() -> dict[int, int]:
    """Per-socket receive-buffer drops from /proc/net/udp (last column).

    Lost datagrams are the usual cause of FailedTimeoutOnRecv with -nr, and
    this says whose socket overflowed: Kamailio's or one of the SIPps.
    """
    drops: dict[int, int] = {}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return drops
    for line in lines:
        fields = line.split()
        port = int(fields[1].split(":")[1], 16)
        drops[port] = drops.get(port, 0) + int(fields[-1])
    return drops


def cpu_snapshot() -> dict[int, tuple[str, int]]:
    """pid -> (comm, utime+stime ticks) for every process, to spot CPU hogs."""
    snap: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw.rsplit(")", 1)[1].split()
        snap[int(entry)] = (comm, int(fields[11]) + int(fields[12]))
    return snap


def foreign_cpu(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], ours: set[int]
) -> dict[str, float]:
    """CPU seconds burnt by processes that are not part of this run.

    A ceiling measured while something else eats a core of a 2-core box is
    not a Kamailio number; this makes that visible per run.
    """
    tick = os.sysconf("SC_CLK_TCK")
    by_comm: dict[str, float] = {}
    for pid, (comm, ticks) in after.items():
        if pid in ours or pid == os.getpid():
            continue
        delta = ticks - before.get(pid, (comm, 0))[1]
        if delta > 0:
            by_comm[comm] = by_comm.get(comm, 0.0) + delta / tick
    top = sorted(by_comm.items(), key=lambda kv: kv[1], reverse=True)[:5]
    return {"total": round(sum(by_comm.values()), 2), **{k: round(v, 2) for k, v in top}}


def wait_with_rusage(proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Reap `proc` ourselves to get its CPU time (Popen.wait discards rusage)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.02)
    return None


def run_once(
    sipp: str,
    workdir: Path,
    label: str,
    calls: int,
    rate: int,
    workers: int,
    routing: Routing,
    uac_timeout_s: int,
    kamailio_opts: dict[str, Any],
) -> dict[str, Any]:
    """One full topology: fresh UAS pair, fresh Kamailio, one bounded UAC."""
    rundir = workdir / label
    if rundir.exists():
        shutil.rmtree(rundir)
    rundir.mkdir(parents=True)
    kport, port_a, port_b, uac_port = free_udp_ports(4)
    members = [(HOST, port_a), (HOST, port_b)]
    uas_timeout = uac_timeout_s + 30
    result: dict[str, Any] = {"label": label, "target_rate": rate, "calls": calls}

    ours: set[int] = set()
    foreign: dict[int, str] = {}
    with ExitStack() as stack:
        uas_procs: list[subprocess.Popen[bytes]] = []
        for name, port in (("uas_a", port_a), ("uas_b", port_b)):
            proc = start_uas(sipp, port, rundir, name, uas_timeout)
            uas_procs.append(proc)
            ours.add(proc.pid)
            stack.callback(killpg_quietly, proc)
        for port in (port_a, port_b):
            if not wait_udp_bound(port):
                raise RuntimeError(f"SIPp UAS did not bind {HOST}:{port}")

        kam = stack.enter_context(
            KamailioProcess(
                (HOST, kport),
                members,
                rundir / "kamailio",
                workers,
                routing=routing,
                **kamailio_opts,
            )
        )
        result["kamailio_cmd"] = " ".join(kam.command)
        ours.update(kam.group_pids())
        cpu_before = kam.cpu_seconds()

        uac_cmd = [
            sipp,
            "-sn",
            "uac",
            f"{HOST}:{kport}",
            "-i",
            HOST,
            "-p",
            str(uac_port),
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-nr",
            "-recv_timeout",
            "5000",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(rundir / "uac.csv"),
            "-fd",
            "1",
            "-trace_err",
            "-error_file",
            str(rundir / "uac_errors.log"),
            "-timeout",
            f"{uac_timeout_s}s",
        ]
        snap0 = cpu_snapshot()
        uas_cpu0 = [proc_cpu_seconds(p.pid) for p in uas_procs]
        started = time.monotonic()
        with open(rundir / "uac.out", "wb") as out:
            uac = subprocess.Popen(
                uac_cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=rundir,
                start_new_session=True,
            )
            stack.callback(killpg_quietly, uac)
            ours.add(uac.pid)
            time.sleep(0.2)
            foreign.update(sip_processes())
            uac_cpu = wait_with_rusage(uac, uac_timeout_s + 30)
        elapsed = time.monotonic() - started
        snap1 = cpu_snapshot()
        foreign.update(sip_processes())
        uas_cpu = sum(proc_cpu_seconds(p.pid) - c0 for p, c0 in zip(uas_procs, uas_cpu0, strict=False))
        drops = udp_drops_by_port()  # UAC socket is gone already; others are live
        result["udp_rcvbuf_drops"] = {
            "kamailio": drops.get(kport, 0),
            "uas_a": drops.get(port_a, 0),
            "uas_b": drops.get(port_b, 0),
        }
        result["uac_exit"] = uac.returncode
        result["uac_wall_s"] = round(elapsed, 2)
        result["cpu_s"] = {
            "kamailio": round(kam.cpu_seconds() - cpu_before, 2),
            "sipp_uac": round(uac_cpu, 2) if uac_cpu is not None else None,
            "sipp_uas_both": round(uas_cpu, 2),
            "foreign": foreign_cpu(snap0, snap1, ours),
        }
        result["kamailio_log_errors"] = sum(1 for line in kam.log_tail(1_000_000).splitlines() if "ERROR" in line)
        time.sleep(1.2)  # let the UAS write one more stat row (-fd 1)
        for proc in uas_procs:
            killpg_quietly(proc)
    # ExitStack has stopped Kamailio and every SIPp by now.
    result["concurrent_foreign_sip_processes"] = sorted(cmd for pid, cmd in foreign.items() if pid not in ours and cmd)

    uac_row = last_stat_row(rundir / "uac.csv")
    created = as_int(uac_row, "TotalCallCreated")
    result["uac"] = {
        "created": created,
        "successful": as_int(uac_row, "SuccessfulCall(C)"),
        "failed": as_int(uac_row, "FailedCall(C)"),
        "offered_cps": offered_cps(rundir / "uac.csv"),
        # SIPp stopped before placing all calls: killed from outside or -timeout.
        "interrupted": created < calls,
        "failure_reasons": {k: as_int(uac_row, k) for k in FAILURE_COLUMNS if as_int(uac_row, k)},
    }
    result["uac"]["late_180_after_200"] = count_late_provisionals(rundir / "uac_errors.log")
    per_member: dict[str, dict[str, int]] = {}
    for name, port in (("uas_a", port_a), ("uas_b", port_b)):
        row = last_stat_row(rundir / f"{name}.csv")
        per_member[f"{HOST}:{port}"] = {
            "created": as_int(row, "TotalCallCreated"),
            "successful": as_int(row, "SuccessfulCall(C)"),
            "failed": as_int(row, "FailedCall(C)"),
        }
    result["members"] = per_member
    # >10% of a core used by strangers on average is enough to move a ceiling.
    busy_strangers = result["cpu_s"]["foreign"]["total"] > 0.1 * result["uac_wall_s"]
    result["contaminated"] = bool(
        result["concurrent_foreign_sip_processes"] or result["uac"]["interrupted"] or busy_strangers
    )
    return result


def sip_processes() -> dict[int, str]:
    """Live kamailio/sipp/sipshadow processes (pid -> command line).

    Used to report leaks and to flag runs that shared the CPU with someone
    else's SIP load, which makes a ceiling number meaningless.
    """
    names = {"kamailio", "sipp", "sipshadow"}
    procs: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if comm not in names:
                continue
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        procs[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return procs


def wait_for_quiet(limit: float) -> float:
    """Wait (bounded) until no foreign SIP processes run; returns seconds waited.

    Zombies have an empty command line and do not count.
    """
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if not any(sip_processes().values()):
            break
        time.sleep(1.0)
    return round(time.monotonic() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where run artefacts go (default: a new temp dir)",
    )
    parser.add_argument("--workers", type=int, default=2, help="Kamailio UDP children")
    parser.add_argument("--routing", choices=("callid-hash", "dialog"), default="callid-hash")
    parser.add_argument(
        "--rates",
        default="1000,2000,3000",
        help="comma-separated cps for the ceiling runs ('' to skip)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each ceiling run")
    parser.add_argument("--shm-mb", type=int, default=2048, help="Kamailio -m")
    parser.add_argument("--pkg-mb", type=int, default=16, help="Kamailio -M")
    parser.add_argument(
        "--shm-manager",
        choices=("qm", "fm", "tlsf"),
        default="fm",
        help="Kamailio -x; qm is Debian's (slow, debug) default",
    )
    parser.add_argument("--attempts", type=int, default=3, help="retries for runs disturbed by foreign SIP load")
    parser.add_argument(
        "--quiet-wait", type=float, default=180.0,
        help="seconds to wait for foreign sipp/kamailio/sipshadow to go away before a run",
    )  # fmt: skip
    args = parser.parse_args()

    if not kamailio_available():
        print(json.dumps({"skipped": "kamailio not available"}))
        return 0
    sipp = shutil.which("sipp")
    if sipp is None:
        print(json.dumps({"skipped": "sipp not available"}))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kamailio-smoke-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "workdir": str(workdir),
        "workers": args.workers,
        "routing": args.routing,
        "cpus": os.cpu_count(),
    }
    kam_opts: dict[str, Any] = {
        "shm_mb": args.shm_mb,
        "pkg_mb": args.pkg_mb,
        "shm_manager": args.shm_manager,
    }

    def measured(label: str, calls: int, rate: int, uac_timeout_s: int) -> dict[str, Any]:
        """Run until one attempt is clean: the box is shared, and other SIP
        load (or someone signalling every `sipp`) makes a run meaningless."""
        result: dict[str, Any] = {}
        for attempt in range(1, args.attempts + 1):
            waited = wait_for_quiet(args.quiet_wait)
            result = run_once(
                sipp, workdir, label, calls, rate, args.workers, args.routing,
                uac_timeout_s=uac_timeout_s, kamailio_opts=kam_opts,
            )  # fmt: skip
            result["attempt"] = attempt
            result["waited_for_quiet_s"] = waited
            if not result["contaminated"]:
                break
        return result

    report["smoke"] = measured("smoke", 2000, 500, uac_timeout_s=60)
    report["ceiling"] = [
        measured(f"rate{rate}", rate * args.seconds, rate, uac_timeout_s=args.seconds * 3 + 30)
        for rate in [int(r) for r in args.rates.split(",") if r.strip()]
    ]
    report["sip_processes_at_exit"] = sorted(sip_processes().values())
    # Pass = every call completed except 180/200 reorders (a property of
    # multi-worker Kamailio, see count_late_provisionals) and both members
    # took calls. Strict zero-failure would flake on that reorder.
    smoke = report["smoke"]
    uac = smoke["uac"]
    ok = (
        uac["successful"] + uac["late_180_after_200"] == 2000
        and not uac["interrupted"]
        and all(m["created"] > 0 for m in smoke["members"].values())
    )
    report["smoke_ok"] = ok
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
