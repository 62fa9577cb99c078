"""Kamailio 5.6 as a reference dialog-aware SIP load balancer for benchmarks.

The benchmark compares sipshadow's ALG against a well-known proxy doing the
same job: SIPp UAC -> Kamailio -> N SIPp UAS members, all on loopback. This
module renders a minimal Kamailio config for that job and runs Kamailio in
the foreground under a context manager so a benchmark can never leak it.

Standard library only, so the lab can be used without extra dependencies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from sipshadow.lab.alg import options_ping

__all__ = [
    "DISPATCHER_SET",
    "KamailioError",
    "KamailioProcess",
    "MemManager",
    "Routing",
    "kamailio_available",
    "kamailio_binary",
    "render_config",
    "render_dispatcher_list",
]

Member = tuple[str, int]

#: Dispatcher set id that holds the members (dispatcher needs a numeric set).
DISPATCHER_SET = 1

#: How in-dialog requests find the member that took the INVITE.
#: "callid-hash": every request of a call is dispatched with algorithm 0
#:   (hash over Call-ID), so ACK/BYE land on the INVITE's member without any
#:   Route header. Stateless and deterministic; the spread is a hash, not
#:   strict round-robin.
#: "dialog": INVITEs go round-robin (algorithm 4); the chosen member is kept
#:   in the dialog ($dlg_var) and in-dialog requests are sent back to it after
#:   the dialog module matched them by Call-ID/tags. This mirrors what an ALG
#:   does, at the cost of a dialog lookup per in-dialog request.
Routing = Literal["callid-hash", "dialog"]

#: Kamailio memory allocators (-x; pkg follows shm unless -X is given).
#: Debian's build defaults to qm with DBG_SR_MEMORY, which on a 2-core box
#: roughly doubles Kamailio's CPU per call and makes 3000 cps collapse into
#: socket drops; fm (or tlsf) holds 4000 cps. None keeps the build default.
MemManager = Literal["qm", "fm", "tlsf"]

# ds_select_dst() algorithm numbers from the Kamailio 5.6 dispatcher README.
_DS_ALG_HASH_CALLID = 0
_DS_ALG_ROUND_ROBIN = 4

# Debian installs to /usr/sbin, which a non-login PATH may lack.
_SEARCH_PATHS = ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio")


class KamailioError(RuntimeError):
    """Kamailio could not be configured or started; message carries its log."""


def kamailio_binary() -> str | None:
    """Locate the kamailio binary; /usr/sbin is often missing from PATH."""
    found = shutil.which("kamailio")
    if found:
        return found
    for candidate in _SEARCH_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def kamailio_available() -> bool:
    """True if a runnable kamailio exists, so benchmarks can skip cleanly."""
    binary = kamailio_binary()
    if binary is None:
        return False
    try:
        result = subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and b"kamailio" in result.stdout.lower()


def render_dispatcher_list(members: list[Member], set_id: int = DISPATCHER_SET) -> str:
    """Dispatcher list file: dispatcher 5.6 cannot take destinations inline."""
    if not members:
        raise ValueError("at least one member is required")
    lines = ["# setid destination flags priority"]
    for host, port in members:
        lines.append(f"{set_id} sip:{host}:{port} 0 0")
    return "\n".join(lines) + "\n"


def render_config(
    listen: tuple[str, int],
    members: list[Member],
    workers: int = 2,
    *,
    list_file: str | os.PathLike[str] = "dispatcher.list",
    routing: Routing = "callid-hash",
    dialog_hash_size: int = 16384,
    max_recv_buffer: int | None = 8 * 1024 * 1024,
) -> str:
    """Kamailio 5.6 config for a dialog-tracking UDP load balancer.

    `list_file` must name the file written from `render_dispatcher_list()`;
    give an absolute path, because Kamailio resolves relative paths against
    its working directory, not against the config file.
    `members` is only validated here (the list file carries it) so a caller
    cannot render a config for an empty pool.
    `max_recv_buffer` caps Kamailio's SO_RCVBUF auto-probing (core
    `maxbuffer`, 256 KB by default, which can overflow in SIPp's bursts);
    8 MB matches what sipshadow's own node asks for, so the
    comparison is not decided by socket buffers. None keeps the default.
    """
    if not members:
        raise ValueError("at least one member is required")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if dialog_hash_size < 1 or dialog_hash_size & (dialog_hash_size - 1):
        raise ValueError("dialog_hash_size must be a power of two")
    if routing not in ("callid-hash", "dialog"):
        raise ValueError(f"unknown routing {routing!r}")
    host, port = listen
    maxbuffer = "" if max_recv_buffer is None else f"\nmaxbuffer={int(max_recv_buffer)}"
    list_path = os.fspath(list_file)
    if '"' in list_path:
        raise ValueError("list_file path must not contain double quotes")

    initial_alg = _DS_ALG_HASH_CALLID if routing == "callid-hash" else _DS_ALG_ROUND_ROBIN
    if routing == "callid-hash":
        # Same hash as the INVITE => same member, no state needed to route.
        remember_member = ""
        in_dialog_target = f"""\
    if (!ds_select_dst("{DISPATCHER_SET}", "{_DS_ALG_HASH_CALLID}")) {{
        if (!is_method("ACK")) sl_send_reply("503", "No Member");
        exit;
    }}"""
    else:
        # The member chosen for the INVITE lives in the dialog; stale or
        # unknown dialogs get 481 like a real dialog-stateful element.
        remember_member = """
    if (is_method("INVITE")) {
        $dlg_var(member) = $du;
    }"""
        in_dialog_target = """\
    if ($dlg_var(member) == $null) {
        if (!is_method("ACK")) sl_send_reply("481", "Call Does Not Exist");
        exit;
    }
    $du = $dlg_var(member);"""

    return f"""\
#!KAMAILIO
# Generated by sipshadow.lab.kamailio: benchmark reference load balancer.
# routing={routing}

####### Global parameters #########
# Errors only: logging must not be what limits throughput.
debug=-1
log_stderror=yes
log_facility=LOG_LOCAL0
memdbg=5
memlog=5
corelog=-1

# UDP only: {workers} receiver process(es) on the single listen socket.
listen=udp:{host}:{port}
children={workers}{maxbuffer}
disable_tcp=yes
enable_sctp=no
auto_aliases=no

# No DNS on the hot path (everything is a literal IP on loopback).
dns=no
rev_dns=no
use_dns_cache=off
dns_try_ipv6=no

server_signature=no
sip_warning=0

####### Modules ########
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "dialog.so"
loadmodule "dispatcher.so"

# tm: fail fast; SIPp runs with -nr and -recv_timeout, so long timers only
# keep dead transactions in shared memory.
modparam("tm", "fr_timer", 5000)
modparam("tm", "fr_inv_timer", 30000)

# rr: no From-tag bookkeeping needed for a proxy in the middle.
modparam("rr", "append_fromtag", 0)

# dialog: SIPp's uac scenario ignores Record-Route, so in-dialog requests
# carry no "did" cookie; DID_FALLBACK (1) matches them by Call-ID/tags.
modparam("dialog", "dlg_match_mode", 1)
modparam("dialog", "hash_size", {dialog_hash_size})
modparam("dialog", "default_timeout", 3600)
modparam("dialog", "enable_stats", 1)

# dispatcher: static list, no probing (members are assumed up).
modparam("dispatcher", "list_file", "{list_path}")
modparam("dispatcher", "ds_ping_interval", 0)
modparam("dispatcher", "force_dst", 1)

####### Routing logic ########
request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}

    # Keepalive / readiness probe aimed at the balancer itself.
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {{
        sl_send_reply("200", "OK");
        exit;
    }}

    if (has_totag()) {{
        route(WITHINDLG);
        exit;
    }}

    if (is_method("CANCEL")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}

    # Absorb retransmissions of requests we already handle statefully.
    if (!is_method("ACK")) {{
        if (t_precheck_trans()) {{
            t_check_trans();
            exit;
        }}
        t_check_trans();
    }}

    if (is_method("INVITE")) {{
        record_route();
        dlg_manage();
    }}

    if (!ds_select_dst("{DISPATCHER_SET}", "{initial_alg}")) {{
        sl_send_reply("503", "No Member");
        exit;
    }}{remember_member}
    route(RELAY);
    exit;
}}

route[WITHINDLG] {{
    # Peers that honour Record-Route (e.g. a UAS-originated BYE) come with a
    # Route set; the dialog module sees them via the rr callback.
    if (loose_route()) {{
        route(RELAY);
        exit;
    }}
    # ACK to a negative final reply is hop-by-hop: t_check_trans() hands it
    # to tm and ends the script. For an ACK to 2xx it only returns a hint,
    # and that end-to-end ACK must still be routed below.
    if (is_method("ACK")) {{
        t_check_trans();
    }}
    # No Route header (SIPp uac): let the dialog module match and update
    # the dialog (ACK confirms, BYE terminates), then pick the member.
    dlg_manage();
{in_dialog_target}
    route(RELAY);
    exit;
}}

route[RELAY] {{
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}
"""


class KamailioProcess:
    """Run Kamailio in the foreground for the duration of a `with` block.

    Everything (config, dispatcher list, pid file, runtime dir, stderr log)
    lives in `workdir`, so nothing under /etc or /run is needed or touched.
    Kamailio forks its workers; it is started in its own session and the
    whole process group is killed on exit so no worker can outlive a run.

    `shm_mb` defaults to 2048 because tm keeps every completed transaction
    for wait_timer (5 s): at N cps that is ~10*N live transactions of ~10 KB
    (Debian builds with memory debugging). 256 MB runs out (t_newtran "out
    of mem", calls answered 500) near 1500 cps, 1024 MB near 6000 cps.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        members: list[Member],
        workdir: str | os.PathLike[str],
        workers: int = 2,
        *,
        routing: Routing = "callid-hash",
        shm_mb: int = 2048,
        pkg_mb: int = 16,
        shm_manager: MemManager | None = "fm",
        start_timeout: float = 15.0,
        netns: str | None = None,
    ) -> None:
        self.listen = listen
        self.members = list(members)
        self.workdir = Path(workdir).resolve()
        self.workers = workers
        self.routing: Routing = routing
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.shm_manager = shm_manager
        self.start_timeout = start_timeout
        self.netns = netns  # run inside this test-bed namespace (a member of the paper's cluster)
        self._in_netns = ["ip", "netns", "exec", netns] if netns else []
        self.config_path = self.workdir / "kamailio.cfg"
        self.list_path = self.workdir / "dispatcher.list"
        self.pid_path = self.workdir / "kamailio.pid"
        self.runtime_dir = self.workdir / "run"
        self.log_path = self.workdir / "kamailio.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """Pid of the Kamailio main process (also its process-group id)."""
        if self._proc is None:
            raise RuntimeError("Kamailio is not running")
        return self._proc.pid

    @property
    def command(self) -> list[str]:
        """Exact argv used to start Kamailio, for reports and reproduction."""
        binary = kamailio_binary()
        if binary is None:
            raise KamailioError("kamailio binary not found")
        manager = ["-x", self.shm_manager] if self.shm_manager else []
        return [
            *self._in_netns,
            binary,
            "-DD",  # do not daemonize: we own the lifetime of the main process
            "-E",  # log to stderr, which we redirect to kamailio.log
            "-f",
            str(self.config_path),
            "-P",
            str(self.pid_path),
            "-Y",
            str(self.runtime_dir),
            "-w",
            str(self.workdir),  # cores and relative paths stay in workdir
            "-m",
            str(self.shm_mb),
            "-M",
            str(self.pkg_mb),
            *manager,
        ]

    def write_files(self) -> None:
        """Write config and dispatcher list; separate so callers can inspect."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.list_path.write_text(render_dispatcher_list(self.members))
        self.config_path.write_text(
            render_config(
                self.listen,
                self.members,
                self.workers,
                list_file=self.list_path,
                routing=self.routing,
            )
        )

    def check_config(self) -> None:
        """Run `kamailio -c` so config errors surface before any traffic."""
        binary = kamailio_binary()
        if binary is None:
            raise KamailioError("kamailio binary not found")
        result = subprocess.run(
            [*self._in_netns, binary, "-c", "-f", str(self.config_path), "-Y", str(self.runtime_dir)],
            capture_output=True,
            timeout=30,
            check=False,
            cwd=self.workdir,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise KamailioError(f"config check failed:\n{output[-4000:]}")

    def start(self) -> None:
        """Write, check and start Kamailio, then wait for an OPTIONS 200."""
        if self._proc is not None:
            raise RuntimeError("already started")
        self.write_files()
        self.check_config()
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # own process group => one killpg
            )
        except OSError:
            log.close()
            self._log_file = None
            raise
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Poll with OPTIONS; a listening socket alone is not proof of life."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise KamailioError(f"kamailio exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self._answers_options():
                return
            time.sleep(0.1)
        raise KamailioError(f"kamailio did not answer OPTIONS within {self.start_timeout}s:\n{self.log_tail()}")

    def _answers_options(self) -> bool:
        if self.netns is None:
            return options_ping(self.listen, timeout_s=0.3)
        probe = [
            *self._in_netns,
            sys.executable,
            "-m",
            "sipshadow.lab.alg",
            "ping",
            self.listen[0],
            str(self.listen[1]),
        ]
        return subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0

    def group_pids(self) -> list[int]:
        """Pids in Kamailio's process group (main + forked workers)."""
        if self._proc is None:
            return []
        pgid = self._proc.pid
        pids: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
        return sorted(pids)

    def cpu_seconds(self) -> float:
        """User+system CPU of the whole group, to see if Kamailio saturated."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.group_pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def log_tail(self, limit: int = 4000) -> str:
        """Last part of Kamailio's stderr log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after `grace`."""
        proc = self._proc
        if proc is not None:
            pgid = proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
            # Workers may outlive the main process; sweep the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
            self._proc = None
        log = self._log_file
        if log is not None:
            log.close()
            self._log_file = None

    def __enter__(self) -> KamailioProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
