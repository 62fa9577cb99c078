"""Kamailio 5.6 as a reference dialog-aware SIP load balancer for benchmarks.

The benchmark compares sipshadow's ALG against a well-known proxy doing the
same job: SIPp UAC -> Kamailio -> N SIPp UAS members, all on loopback. This
module fills the Kamailio config template next to it (`kamailio.cfg.tmpl`)
for that job and runs Kamailio in the foreground under a context manager so
a benchmark can never leak it.

Standard library only, so the lab can be used without extra dependencies.
"""

from __future__ import annotations

import os
import resource
import shutil
import string
import subprocess
import sys
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Literal

from sipshadow.lab.alg import options_ping
from sipshadow.lab.process import ChildExited, ChildProcess, in_namespace

__all__ = [
    "DISPATCHER_SET",
    "KamailioError",
    "KamailioProcess",
    "MemManager",
    "Routing",
    "Transport",
    "fit_tcp_connections",
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

#: How Kamailio reaches the members (and what it listens on besides UDP).
#: "udp": UDP only, TCP disabled (the historical setup).
#: "tcp": it listens on UDP and TCP on the same port and forwards to the members over
#:   TCP (dispatcher destinations `sip:HOST:PORT;transport=tcp`), `tcp_children` readers
#:   as many as the UDP receivers.
Transport = Literal["udp", "tcp"]

#: TCP settings for transport "tcp". An idle connection is closed after this many seconds
#: (a member's connection carries traffic all the time; SIPp's `-t tn` closes its own at
#: each call's end, so the lifetime only reaps ones a client left open).
TCP_CONNECTION_LIFETIME_S = 60
#: Enough for a ladder up to 4000 cps of 0 s calls with a connection per call, even when
#: closes lag seconds behind under overload; Kamailio's default (2048) is not.
TCP_MAX_CONNECTIONS = 16384
#: Descriptors on top of the connections: listen sockets, pipes between processes, logs.
OPEN_FILES_MARGIN = 4096

# ds_select_dst() algorithm numbers from the Kamailio 5.6 dispatcher README.
_DS_ALG_HASH_CALLID = 0
_DS_ALG_ROUND_ROBIN = 4

#: The config template, package data of sipshadow.lab (pyproject.toml's package-data).
CONFIG_TEMPLATE = "kamailio.cfg.tmpl"

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


class ConfigTemplate(string.Template):
    """Only `${name}` is a placeholder: Kamailio's own `$du`, `$rU`, `$dlg_var(...)` stay as written."""

    # A string, as the string.Template docs allow (compiled by __init_subclass__); typeshed wants a Pattern.
    pattern = r"\$(?:\{(?P<braced>[_a-z][_a-z0-9]*)\}|(?P<named>(?!))|(?P<escaped>(?!))|(?P<invalid>(?!)))"  # type: ignore[assignment]


def config_template() -> ConfigTemplate:
    """The Kamailio config template shipped as package data next to this module."""
    return ConfigTemplate(resources.files("sipshadow.lab").joinpath(CONFIG_TEMPLATE).read_text())


def _check_transport(transport: str) -> None:
    if transport not in ("udp", "tcp"):
        raise ValueError(f"unknown transport {transport!r}")


def render_dispatcher_list(members: list[Member], set_id: int = DISPATCHER_SET, *, transport: Transport = "udp") -> str:
    """Dispatcher list file: dispatcher 5.6 cannot take destinations inline.

    With transport "tcp" every destination carries `;transport=tcp`, so t_relay() opens
    (and then reuses) a TCP connection to each member.
    """
    if not members:
        raise ValueError("at least one member is required")
    _check_transport(transport)
    suffix = ";transport=tcp" if transport == "tcp" else ""
    lines = ["# setid destination flags priority"]
    for host, port in members:
        lines.append(f"{set_id} sip:{host}:{port}{suffix} 0 0")
    return "\n".join(lines) + "\n"


def fit_tcp_connections(wanted: int, nofile: tuple[int, int]) -> tuple[int, int | None]:
    """`tcp_max_connections` and `open_files_limit` (None: leave it) under the RLIMIT_NOFILE `nofile`.

    Kamailio raises its own soft limit to `open_files_limit` and exits if that fails, which it
    does above the hard limit without CAP_SYS_RESOURCE; so the limit asked for is never above
    the hard one, and the connections shrink to what fits under it with OPEN_FILES_MARGIN left
    for everything else (or half the descriptors, when the limit is small).
    """
    if wanted < 1:
        raise ValueError("tcp_max_connections must be >= 1")
    soft, hard = (float("inf") if value == resource.RLIM_INFINITY else value for value in nofile)
    needed = wanted + OPEN_FILES_MARGIN
    if needed <= soft:
        return wanted, None
    ceiling = int(min(needed, hard))
    connections = max(1, min(wanted, max(ceiling - OPEN_FILES_MARGIN, ceiling // 2)))
    return connections, ceiling if ceiling > soft else None


def _tcp_settings(
    host: str, port: int, workers: int, transport: Transport, max_connections: int, open_files_limit: int | None
) -> tuple[str, str]:
    """The comment over the socket settings and the TCP lines of the config."""
    if transport == "udp":
        return f"# UDP only: {workers} receiver process(es) on the single listen socket.", "disable_tcp=yes"
    comment = (
        f"# UDP and TCP on the same port: {workers} UDP receiver process(es) and as many TCP\n"
        "# readers (tcp_children); the members are reached over TCP (the dispatcher list)."
    )
    lines = [
        f"listen=tcp:{host}:{port}",
        "disable_tcp=no",
        f"tcp_children={workers}",
        f"tcp_connection_lifetime={TCP_CONNECTION_LIFETIME_S}",
        f"tcp_max_connections={max_connections}",
    ]
    if open_files_limit is not None:
        lines.append(f"open_files_limit={open_files_limit}")
    return comment, "\n".join(lines)


def render_config(
    listen: tuple[str, int],
    members: list[Member],
    workers: int = 2,
    *,
    list_file: str | os.PathLike[str] = "dispatcher.list",
    routing: Routing = "callid-hash",
    dialog_hash_size: int = 16384,
    max_recv_buffer: int | None = 8 * 1024 * 1024,
    transport: Transport = "udp",
    tcp_max_connections: int = TCP_MAX_CONNECTIONS,
    open_files_limit: int | None = None,
) -> str:
    """Kamailio 5.6 config for a dialog-tracking load balancer, over UDP or TCP.

    `list_file` must name the file written from `render_dispatcher_list()`;
    give an absolute path, because Kamailio resolves relative paths against
    its working directory, not against the config file.
    `members` is only validated here (the list file carries it) so a caller
    cannot render a config for an empty pool.
    `max_recv_buffer` caps Kamailio's SO_RCVBUF auto-probing (core
    `maxbuffer`, 256 KB by default, which can overflow in SIPp's bursts);
    8 MB matches what sipshadow's own node asks for, so the
    comparison is not decided by socket buffers. None keeps the default.
    `transport` "tcp" adds a TCP listen socket on the same port with `workers`
    TCP readers (see `Transport`); the list file must then name TCP
    destinations (`render_dispatcher_list(..., transport="tcp")`).
    `open_files_limit` (TCP only) is written when given: see
    `fit_tcp_connections()` for a pair that Kamailio can apply.
    """
    if not members:
        raise ValueError("at least one member is required")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if dialog_hash_size < 1 or dialog_hash_size & (dialog_hash_size - 1):
        raise ValueError("dialog_hash_size must be a power of two")
    if routing not in ("callid-hash", "dialog"):
        raise ValueError(f"unknown routing {routing!r}")
    _check_transport(transport)
    if tcp_max_connections < 1:
        raise ValueError("tcp_max_connections must be >= 1")
    if open_files_limit is not None and open_files_limit <= tcp_max_connections:
        raise ValueError("open_files_limit must exceed tcp_max_connections")
    list_path = os.fspath(list_file)
    if '"' in list_path:
        raise ValueError("list_file path must not contain double quotes")
    host, port = listen
    sockets_comment, tcp = _tcp_settings(host, port, workers, transport, tcp_max_connections, open_files_limit)
    return config_template().substitute(
        routing=routing,
        routing_symbol="ROUTING_DIALOG" if routing == "dialog" else "ROUTING_CALLID_HASH",
        host=host,
        port=port,
        workers=workers,
        sockets_comment=sockets_comment,
        tcp=tcp,
        maxbuffer="# maxbuffer: Kamailio's default" if max_recv_buffer is None else f"maxbuffer={int(max_recv_buffer)}",
        dialog_hash_size=dialog_hash_size,
        list_file=list_path,
        dispatcher_set=DISPATCHER_SET,
        initial_algorithm=_DS_ALG_HASH_CALLID if routing == "callid-hash" else _DS_ALG_ROUND_ROBIN,
        hash_algorithm=_DS_ALG_HASH_CALLID,
    )


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
        transport: Transport = "udp",
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
        _check_transport(transport)
        self.transport: Transport = transport
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.shm_manager = shm_manager
        self.start_timeout = start_timeout
        self.netns = netns  # run inside this test-bed namespace (a member of the paper's cluster)
        self.config_path = self.workdir / "kamailio.cfg"
        self.list_path = self.workdir / "dispatcher.list"
        self.pid_path = self.workdir / "kamailio.pid"
        self.runtime_dir = self.workdir / "run"
        self.log_path = self.workdir / "kamailio.log"
        self.child = ChildProcess()

    @property
    def pid(self) -> int:
        """Pid of the Kamailio main process (also its process-group id)."""
        if not self.child.running():
            raise RuntimeError("Kamailio is not running")
        return self.child.pid

    @property
    def command(self) -> list[str]:
        """Exact argv used to start Kamailio (inside `netns` when set), for reports and reproduction."""
        binary = kamailio_binary()
        if binary is None:
            raise KamailioError("kamailio binary not found")
        manager = ["-x", self.shm_manager] if self.shm_manager else []
        argv = [
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
        return in_namespace(argv, self.netns)

    def write_files(self) -> None:
        """Write config and dispatcher list; separate so callers can inspect."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.list_path.write_text(render_dispatcher_list(self.members, transport=self.transport))
        connections, open_files = fit_tcp_connections(TCP_MAX_CONNECTIONS, resource.getrlimit(resource.RLIMIT_NOFILE))
        self.config_path.write_text(
            render_config(
                self.listen,
                self.members,
                self.workers,
                list_file=self.list_path,
                routing=self.routing,
                transport=self.transport,
                tcp_max_connections=connections,
                open_files_limit=open_files,
            )
        )

    def check_config(self) -> None:
        """Run `kamailio -c` so config errors surface before any traffic."""
        binary = kamailio_binary()
        if binary is None:
            raise KamailioError("kamailio binary not found")
        result = subprocess.run(
            in_namespace([binary, "-c", "-f", str(self.config_path), "-Y", str(self.runtime_dir)], self.netns),
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
        if self.child.running():
            raise RuntimeError("already started")
        self.write_files()
        self.check_config()
        self.child.start(self.command, log=self.log_path, cwd=self.workdir, append=False)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Poll with OPTIONS; a listening socket alone is not proof of life."""
        try:
            self.child.wait_ready(self._answers_options, self.start_timeout, poll_s=0.1)
        except ChildExited as exited:
            raise KamailioError(f"kamailio exited with {exited.returncode}:\n{self.log_tail()}") from None
        except TimeoutError:
            raise KamailioError(
                f"kamailio did not answer OPTIONS within {self.start_timeout}s:\n{self.log_tail()}"
            ) from None

    def _answers_options(self) -> bool:
        if self.netns is None:
            return options_ping(self.listen, timeout_s=0.3)
        probe = in_namespace(
            [sys.executable, "-m", "sipshadow.lab.alg", "ping", self.listen[0], str(self.listen[1])], self.netns
        )
        return subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0

    def group_pids(self) -> list[int]:
        """Pids in Kamailio's process group (main + forked workers)."""
        return self.child.group_pids()

    def cpu_seconds(self) -> float:
        """User+system CPU of the whole group, to see if Kamailio saturated."""
        return self.child.cpu_seconds()

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds used so far (`ChildProcess.cpu_times`)."""
        return self.child.cpu_times()

    def log_tail(self, limit: int = 4000) -> str:
        """Last part of Kamailio's stderr log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after `grace` (workers may outlive the main process)."""
        self.child.stop(grace)

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
