"""Drive SIPp (3.6.x) from tests and benchmarks.

SIPp is the traffic generator on both sides of the ALG: a UAS per member and
a UAC in front of the load balancer. This module starts SIPp processes with
a fixed, known set of options (loopback only, bounded in calls and time,
statistics written to a CSV in a caller-chosen run directory), stops them
reliably, and turns the final statistics row into a small result object.

Facts about SIPp 3.6.1 that this module relies on (verified against the
binary and its source):

* ``-trace_stat -stf FILE -fd N`` writes a ';'-separated CSV: one header
  line, one row at start-up, one row every N seconds and one final row when
  SIPp exits (normal end, ``-timeout``, SIGUSR1 or SIGTERM; not SIGKILL).
  Every line ends with a trailing ';'. Counter columns come in pairs,
  ``X(P)`` (periodic, since the last row) and ``X(C)`` (cumulative), except
  ``TotalCallCreated`` and ``CurrentCall``. Timestamps hold tabs.
* The stat file is first written after SIPp has bound its sockets, so its
  first data row is a reliable "ready" signal.
* SIGUSR1 = graceful quit: no new calls, wait for open calls to end.
  A second SIGUSR1 is no faster in practice. SIGTERM writes the final row
  and exits at once (exit code then depends on failed calls).
* ``-timeout`` also only *starts* a graceful quit, so a UAS holding a call
  that never ends keeps running. ``-timeout_error`` turns it into a hard
  exit (code 255, final stat row still written); SippUas uses it so that
  a UAS orphaned by a crashed test run dies by itself.
* ``-aa`` makes SIPp answer INFO/NOTIFY/OPTIONS/UPDATE that do not match the
  scenario with a 200. In UAS (server) mode an out-of-call OPTIONS with a
  new Call-ID first creates an incoming "call" (TotalCallCreated and
  CurrentCall +1), is answered 200 and that call then waits for an INVITE
  forever: it is never counted as failed (unless ``-recv_timeout`` is given
  to the UAS) but it blocks a graceful quit. Hence ``SippUas.stop`` falls
  back to SIGTERM. The 200 goes to the address that first used the Call-ID.
* Exit codes: 0 all calls succeeded, 1 some failed, 97 internal exit,
  98/99 other, 255 fatal error, 254 socket bind error.
"""

from __future__ import annotations

import csv
import ipaddress
import math
import os
import random
import signal
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from sipshadow.lab.process import ChildExited, ChildProcess

__all__ = [
    "EXIT_BIND_ERROR",
    "EXIT_TEST_OK",
    "LOOPBACK",
    "SippError",
    "SippResult",
    "SippUac",
    "SippUas",
    "free_port",
    "parse_sipp_duration",
    "read_stat_rows",
    "run_uac",
    "sipp_binary",
]

LOOPBACK = "127.0.0.1"
LAB_PORTS = range(20000, 32768)  # below Linux's default ephemeral range (32768-60999)
TESTBED_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")

#: SIPp exit codes (include/defines.h) this module acts on; a negative C code is seen as 254.
EXIT_TEST_OK = 0
EXIT_BIND_ERROR = 254

#: Column names of the SIPp 3.6.1 stat CSV that this module reads.
COL_TOTAL_CREATED = "TotalCallCreated"
COL_CURRENT = "CurrentCall"
COL_SUCCESSFUL = "SuccessfulCall(C)"
COL_FAILED = "FailedCall(C)"

#: Failure-cause counters (cumulative); "FailedCall(C)" is their total.
FAILURE_CAUSE_COLUMNS: tuple[str, ...] = (
    "FailedCannotSendMessage(C)",
    "FailedMaxUDPRetrans(C)",
    "FailedTcpConnect(C)",
    "FailedTcpClosed(C)",
    "FailedUnexpectedMessage(C)",
    "FailedCallRejected(C)",
    "FailedCmdNotSent(C)",
    "FailedRegexpDoesntMatch(C)",
    "FailedRegexpShouldntMatch(C)",
    "FailedRegexpHdrNotFound(C)",
    "FailedOutboundCongestion(C)",
    "FailedTimeoutOnRecv(C)",
    "FailedTimeoutOnSend(C)",
    "FailedTestDoesntMatch(C)",
    "FailedTestShouldntMatch(C)",
    "FailedStrcmpDoesntMatch(C)",
    "FailedStrcmpShouldntMatch(C)",
)

_STAT_DELIMITER = ";"
_TERM_WAIT_S = 3.0


#: SIPp's transports (-t): UDP with one socket, TCP with one connection, TCP with one per call.
TRANSPORTS = ("u1", "t1", "tn")
#: -max_socket for TCP runs: SIPp's default (50000) exceeds the open-file limit and it warns.
MAX_SOCKETS = 4096


class SippError(RuntimeError):
    """SIPp could not be started or did not become ready."""


def sipp_binary() -> str:
    """Path of the sipp executable; SIPP env var overrides for odd installs."""
    return os.environ.get("SIPP", "sipp")


def allowed_address(host: str, netns: str | None) -> bool:
    """The network rule: loopback, or the benchmark range inside a namespace the test made."""
    if host == LOOPBACK:
        return True
    try:
        return netns is not None and ipaddress.IPv4Address(host) in TESTBED_NETWORK
    except ValueError:
        return False


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP on ``host``, below the kernel's ephemeral range.

    A node binds its service port for UDP and, with TCP on, for TCP too. A port taken from the
    ephemeral range (32768-60999 by default) can be handed to some client's outgoing connection
    between this check and the node's bind ("Address already in use", seen once in CI), so the
    port is drawn from 20000-32767, which the kernel never gives out on its own. The port is
    released before returning: a second process can still race for it, and SippUas retries on
    bind errors when it picked the port.

    Raises RuntimeError when 200 draws found nothing free.
    """
    draw = random.Random()  # the lab's own choice, not the core's: no determinism involved
    for _ in range(200):
        port = draw.choice(LAB_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            try:
                udp.bind((host, port))
                tcp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def parse_sipp_duration(value: str) -> float:
    """Seconds from SIPp's ``HH:MM:SS`` or ``HH:MM:SS:uuuuuu`` stat fields.

    Response times and call lengths use the second form (microsecond field,
    millisecond resolution); ElapsedTime uses the first.
    """
    parts = value.strip().split(":")
    if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a SIPp duration: {value!r}")
    hours, minutes, seconds = (int(p) for p in parts[:3])
    micros = int(parts[3]) if len(parts) == 4 else 0
    return hours * 3600 + minutes * 60 + seconds + micros / 1_000_000


def read_stat_rows(path: Path) -> list[dict[str, str]]:
    """All complete rows of a SIPp stat CSV, keyed by header names.

    Tolerates a file being written: a trailing partial line or a row with
    a different column count is ignored. The empty column produced by the
    trailing ';' is dropped.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    complete = lines[:-1]  # last element is "" or an unfinished line
    if not complete:
        return []
    reader = csv.reader(complete, delimiter=_STAT_DELIMITER)
    header = next(reader)
    while header and header[-1] == "":
        header.pop()
    rows: list[dict[str, str]] = []
    for raw in reader:
        if raw and raw[-1] == "" and len(raw) == len(header) + 1:
            raw = raw[:-1]
        if len(raw) != len(header):
            continue
        rows.append(dict(zip(header, raw, strict=True)))
    return rows


def _int_field(row: dict[str, str], column: str) -> int:
    """Counter value of ``column``; 0 when absent or empty (keeps asserts simple)."""
    value = row.get(column, "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        return int(float(value))


@dataclass(frozen=True)
class SippResult:
    """Outcome of one SIPp process, taken from its final stat row.

    ``stats`` is the raw final row (column name -> string) for anything the
    typed fields do not cover; ``returncode`` is None if the process could
    not be reaped, negative if it died from a signal (e.g. -9 for SIGKILL,
    in which case the stats are the last periodic row).
    """

    returncode: int | None
    successful_calls: int
    failed_calls: int
    total_calls: int
    current_calls: int
    stats: dict[str, str]
    run_dir: Path
    stat_file: Path
    error_file: Path
    screen_file: Path
    timed_out: bool = False
    command: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when SIPp exited 0, nothing failed and at least one call succeeded."""
        return (
            self.returncode == EXIT_TEST_OK
            and self.failed_calls == 0
            and self.successful_calls > 0
            and not self.timed_out
        )

    def counter(self, column: str) -> int:
        """Integer value of any counter column of the final row (0 if missing)."""
        return _int_field(self.stats, column)

    @property
    def failure_causes(self) -> dict[str, int]:
        """Non-zero cumulative failure counters, e.g. {'FailedTimeoutOnRecv(C)': 3}."""
        causes = {col: _int_field(self.stats, col) for col in FAILURE_CAUSE_COLUMNS}
        return {col: n for col, n in causes.items() if n}

    @property
    def response_times_s(self) -> dict[str, float]:
        """Mean cumulative response times by rtd name ('1' for rtd="true"), seconds."""
        times: dict[str, float] = {}
        for column, value in self.stats.items():
            if column.startswith("ResponseTime") and column.endswith("(C)"):
                name = column[len("ResponseTime") : -len("(C)")]
                if name.endswith("StDev"):
                    continue
                times[name] = parse_sipp_duration(value)
        return times

    def errors_text(self) -> str:
        """Content of SIPp's -trace_err log ('' when SIPp logged nothing)."""
        try:
            return self.error_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def summary(self) -> str:
        """One-line description for assertion messages."""
        return (
            f"sipp rc={self.returncode} ok={self.successful_calls} "
            f"failed={self.failed_calls} created={self.total_calls} "
            f"current={self.current_calls} causes={self.failure_causes} "
            f"timed_out={self.timed_out} dir={self.run_dir}"
        )


def _udp_bound_by(pid: int, host: str, port: int, protocol: str = "udp") -> bool | None:
    """Whether process ``pid`` holds a UDP socket bound to host:port (``protocol`` "tcp":
    a TCP socket, listening or connected, bound there).

    Reads /proc/PID/net/udp or tcp (address as the kernel prints it: native-endian hex)
    and the process's socket inodes. None when /proc is not usable.
    """
    try:
        table = Path(f"/proc/{pid}/net/{protocol}").read_text()  # the process's own namespace
        fd_dir = Path(f"/proc/{pid}/fd")
        inodes = set()
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        return None
    (addr,) = struct.unpack("=I", socket.inet_aton(host))
    wanted = f"{addr:08X}:{port:04X}"
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[1] == wanted and fields[9] in inodes:
            return True
    return False


def _format_target(target: str | tuple[str, int]) -> str:
    """'host:port' for SIPp's positional remote host argument."""
    if isinstance(target, tuple):
        host, port = target
        return f"{host}:{port}"
    return target


def _scenario_args(scenario: str | Path) -> list[str]:
    """-sn for a built-in name ('uac', 'uas', ...), -sf for an XML file path."""
    text = str(scenario)
    if isinstance(scenario, Path) or text.endswith(".xml") or os.sep in text:
        path = Path(scenario).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"SIPp scenario not found: {path}")
        return ["-sf", str(path)]
    return ["-sn", text]


def _seconds_arg(seconds: float) -> str:
    """SIPp time option in whole seconds, rounded up, never 0 (0 disables)."""
    return f"{max(1, math.ceil(seconds))}s"


class _SippProcess:
    """What UAS and UAC share: argv, files in run_dir, the child process, its stats.

    SIPp runs with cwd=run_dir so any file it names by itself lands there.
    """

    def __init__(
        self,
        *,
        name: str,
        run_dir: Path,
        scenario: str | Path,
        host: str,
        local_port: int | None,
        timeout: float,
        extra_args: Sequence[str],
        stat_interval_s: int,
        netns: str | None = None,
        transport: str = "u1",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"SIPp transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
        if not allowed_address(host, netns):
            # Traffic stays on loopback, or inside a test bed's namespaces on 198.18.0.0/24.
            raise ValueError(f"sipshadow lab SIPp runs are loopback-only outside a test bed, got {host!r}")
        self.netns = netns
        self.name = name
        self.run_dir = Path(run_dir)
        self.scenario = scenario
        self.host = host
        self.local_port = local_port
        self.timeout = timeout
        self.extra_args = tuple(extra_args)
        self.stat_interval_s = stat_interval_s
        #: SIPp's -t: u1 (UDP, one socket), t1 (TCP, one connection), tn (TCP, one per call).
        self.transport = transport
        self.stat_file = self.run_dir / f"{name}_stat.csv"
        self.error_file = self.run_dir / f"{name}_errors.log"
        self.screen_file = self.run_dir / f"{name}_screen.log"
        self.child = ChildProcess()
        self.result: SippResult | None = None
        self._last: SippResult | None = None

    # -- argv -------------------------------------------------------------

    def _common_args(self) -> list[str]:
        """Options every run gets: loopback, no stdin, stats and error files."""
        args = [
            *_scenario_args(self.scenario),
            "-i", self.host,
            "-nostdin",
            "-trace_stat", "-stf", str(self.stat_file), "-fd", str(self.stat_interval_s),
            "-trace_err", "-error_file", str(self.error_file),
            "-timeout", _seconds_arg(self.timeout),
        ]  # fmt: skip
        if self.transport != "u1":
            args += ["-t", self.transport, "-max_socket", str(MAX_SOCKETS)]
        if self.local_port is not None:
            args += ["-p", str(self.local_port)]
        return args

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, grace_s: float = 0.0) -> SippResult:
        """Stop SIPp and return its final stats.

        grace_s > 0 first asks for a graceful quit (SIGUSR1) so calls still in
        a timewait finish and count as successful; SIPp never quits
        gracefully while it holds an -aa OPTIONS "call", hence the SIGTERM
        fallback (which still writes the final stat row).
        """
        if self.result is not None:
            return self.result
        if self.child.popen is None:
            raise SippError(f"{type(self).__name__}.stop() before start()")
        self._halt(grace_s)
        self.result = self._collect()
        return self.result

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle --------------------------------------------------------

    def _spawn(self) -> None:
        """Start SIPp, its stdout/stderr appended to the screen file after the command line."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.stat_file, self.error_file):
            stale.unlink(missing_ok=True)
        self._last = None
        self.child.start(
            [sipp_binary(), *self._argv()], namespace=self.netns, log=self.screen_file, cwd=self.run_dir, echo=True
        )

    def _wait_ready(self, ready_timeout: float) -> None:
        """Block until SIPp listens: first stat row written and port bound.

        The stat row alone is not enough: on a bind error SIPp also writes
        a (final) row just before exiting, so the socket itself is checked
        in /proc when the port is known.
        """
        try:
            self.child.wait_ready(self._listening, ready_timeout)
        except ChildExited as exited:
            raise SippError(
                f"{self.name}: sipp exited with {exited.returncode} before "
                f"becoming ready; see {self.screen_file}: {self._screen_tail()}"
            ) from None
        except TimeoutError:
            self._halt(grace_s=0.0)
            raise SippError(f"{self.name}: sipp not ready after {ready_timeout}s; see {self.screen_file}") from None

    def _listening(self) -> bool:
        if not read_stat_rows(self.stat_file):
            return False
        port = self.local_port
        protocol = "tcp" if self.transport.startswith("t") else "udp"
        bound = True if port is None else _udp_bound_by(self.child.pid, self.host, port, protocol)
        if bound is None:  # no /proc: give a failing bind time to exit
            time.sleep(0.2)
            bound = self.child.running()
        return bound

    def _screen_tail(self, limit: int = 600) -> str:
        """Last bytes of SIPp's stdout/stderr, for error messages."""
        try:
            data = self.screen_file.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-limit:].decode(errors="replace").strip()

    def running(self) -> bool:
        """True while the SIPp process is alive."""
        return self.child.running()

    def _halt(self, grace_s: float) -> None:
        """SIGUSR1 (graceful quit) for grace_s, then SIGTERM, then SIGKILL."""
        if grace_s > 0 and self.child.signal(signal.SIGUSR1):
            self.child.wait(grace_s)
        self.child.stop(_TERM_WAIT_S)

    def _collect(self, timed_out: bool = False) -> SippResult:
        """Build the result from the last stat row (final row after exit)."""
        rows = read_stat_rows(self.stat_file)
        last = rows[-1] if rows else {}
        returncode = self.child.poll()
        result = SippResult(
            returncode=returncode,
            successful_calls=_int_field(last, COL_SUCCESSFUL),
            failed_calls=_int_field(last, COL_FAILED),
            total_calls=_int_field(last, COL_TOTAL_CREATED),
            current_calls=_int_field(last, COL_CURRENT),
            stats=dict(last),
            run_dir=self.run_dir,
            stat_file=self.stat_file,
            error_file=self.error_file,
            screen_file=self.screen_file,
            timed_out=timed_out,
            command=self.child.argv,
        )
        if returncode is not None:
            self._last = result
        return result

    def snapshot(self) -> SippResult:
        """Current counters as a SippResult without stopping anything."""
        return self._last if self._last is not None else self._collect()


class SippUas(_SippProcess):
    """A SIPp UAS (cluster member stand-in) on 127.0.0.1:port.

    Use as a context manager; the process is always stopped on exit and
    ``result`` then holds the final statistics. ``-aa`` is on by default so
    the ALG's out-of-call OPTIONS health probes get a 200 (see module doc for
    how SIPp counts them).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int | None = None,
        scenario: str | Path = "uas",
        name: str = "uas",
        host: str = LOOPBACK,
        netns: str | None = None,
        timeout: float = 120.0,
        auto_answer: bool = True,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 5.0,
        stat_interval_s: int = 1,
        transport: str = "u1",
    ) -> None:
        super().__init__(
            name=name,
            run_dir=run_dir,
            scenario=scenario,
            host=host,
            local_port=port,
            timeout=timeout,
            extra_args=extra_args,
            stat_interval_s=stat_interval_s,
            netns=netns,
            transport=transport,
        )
        self._auto_port = port is None
        self.auto_answer = auto_answer
        self.ready_timeout = ready_timeout

    @property
    def port(self) -> int:
        """UDP port SIPp listens on (chosen at start when not given)."""
        if self.local_port is None:
            raise SippError("SippUas port is known only after start()")
        return self.local_port

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to put into the ALG's member list."""
        return (self.host, self.port)

    def _argv(self) -> list[str]:
        # -timeout_error: the UAS must die at -timeout even while it holds
        # never-ending -aa OPTIONS calls (graceful quit would wait forever).
        args = [*self._common_args(), "-timeout_error"]
        if self.auto_answer:
            args.append("-aa")
        return [*args, *self.extra_args]

    def start(self) -> Self:
        """Start SIPp and wait until it listens; retries bind races on auto ports."""
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            if self._auto_port:
                self.local_port = free_port(self.host)
            self._spawn()
            try:
                self._wait_ready(self.ready_timeout)
                return self
            except SippError:
                bind_failed = self.child.poll() == EXIT_BIND_ERROR
                if not (bind_failed and attempt + 1 < attempts):
                    raise
        raise SippError("unreachable")  # pragma: no cover

    def kill(self) -> None:
        """SIGKILL without final stats: simulates a member crashing mid-test."""
        self.child.kill(_TERM_WAIT_S)


class SippUac(_SippProcess):
    """A SIPp UAC run that can be started, observed and waited for.

    Background use lets a test disturb the system (kill a member, reload the
    ALG) while calls are in flight: ``uac.start(); ...; res = uac.wait()``.
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        run_dir: Path,
        *,
        scenario: str | Path = "uac",
        calls: int = 10,
        rate: float = 10.0,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
        recv_timeout: float = 5.0,
        local_port: int | None = None,
        name: str = "uac",
        host: str = LOOPBACK,
        netns: str | None = None,
        stat_interval_s: int = 1,
        transport: str = "u1",
    ) -> None:
        super().__init__(
            name=name,
            run_dir=run_dir,
            scenario=scenario,
            host=host,
            local_port=local_port,
            timeout=timeout,
            extra_args=extra_args,
            stat_interval_s=stat_interval_s,
            netns=netns,
            transport=transport,
        )
        if calls <= 0:
            raise ValueError("calls must be positive: a UAC run must be bounded")
        self.target = _format_target(target)
        if not allowed_address(self.target.rsplit(":", 1)[0], netns):
            raise ValueError(f"UAC target must be on {LOOPBACK} (or in a test bed), got {self.target!r}")
        self.calls = calls
        self.rate = rate
        self.recv_timeout = recv_timeout

    def _argv(self) -> list[str]:
        return [
            self.target,
            *self._common_args(),
            "-m", str(self.calls),
            "-r", f"{self.rate:g}",
            "-recv_timeout", f"{max(1, round(self.recv_timeout * 1000))}ms",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Self:
        """Launch the UAC in the background; returns immediately."""
        if self.child.popen is not None:
            raise SippError("SippUac already started")
        self._spawn()
        return self

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish; on timeout stop it and mark the result.

        The default allows the SIPp -timeout plus one receive timeout (calls
        still open at -timeout are allowed to end) plus a margin.
        """
        if self.result is not None:
            return self.result
        if self.child.popen is None:
            raise SippError("SippUac.wait() before start()")
        if timeout is None:
            elapsed = time.monotonic() - self.child.started_at
            timeout = max(1.0, self.timeout + self.recv_timeout + 5.0 - elapsed)
        timed_out = self.child.wait(timeout) is None
        if timed_out:
            self._halt(grace_s=0.0)
        self.result = self._collect(timed_out=timed_out)
        return self.result


def run_uac(
    target: str | tuple[str, int],
    scenario: str | Path = "uac",
    calls: int = 10,
    rate: float = 10.0,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
    *,
    run_dir: Path,
    recv_timeout: float = 5.0,
    local_port: int | None = None,
    name: str = "uac",
) -> SippResult:
    """Run a UAC to completion (``-m calls -r rate``) and return its stats."""
    uac = SippUac(
        target,
        run_dir,
        scenario=scenario,
        calls=calls,
        rate=rate,
        extra_args=extra_args,
        timeout=timeout,
        recv_timeout=recv_timeout,
        local_port=local_port,
        name=name,
    )
    uac.start()
    try:
        return uac.wait()
    finally:
        uac.stop()
