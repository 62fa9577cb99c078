"""A real, throwaway PostgreSQL server, on loopback and a Unix socket: for the record store's
tests and the experiment's records (`lab experiment --records postgres`).

Why real: the store's contract is about what a server does (a transaction, ON CONFLICT, a
connection that dies when the server stops), which no fake can vouch for. The server is
Debian's PostgreSQL (`/usr/lib/postgresql/<version>/bin`, package `postgresql`), run by
`pg_ctl` on a data directory in a fresh temporary directory, listening on 127.0.0.1 at a free
lab port and on a Unix socket in that directory, with trust authentication and no fsync: it
holds nothing worth keeping.

PostgreSQL refuses to run as root, and CI runs as root: then `initdb` and `pg_ctl` run as the
`postgres` system user (made by the Debian package) through `runuser`, and the temporary
directory is handed to that user. As any other user they run as that user.

`stop()` then `start()` restarts on the same data directory and port, which is how a test
takes the database away in the middle of a load and gives it back.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from sipshadow.lab.sipp import LOOPBACK, free_port

#: `pg_ctl start -w` gives up after this (s); a cold start takes well under a second.
START_TIMEOUT_S = 30
#: Appended to postgresql.conf: loopback only, small, and fast at the cost of durability.
SETTINGS = """
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 20
logging_collector = off
"""


def _major(name: str) -> int:
    return int(name) if name.isdigit() else 0


def find_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL's binaries, else those on PATH, else None."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: _major(path.parents[1].name))
    if versions:
        return versions[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries not found (Debian package postgresql; `make setup`)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no `postgres` system user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and no `runuser` to run the server as `postgres`"
    return None


class PostgresServer:
    """One throwaway server: `start()`, `stop()` (fast shutdown), again, then `cleanup()`."""

    def __init__(self, host: str = LOOPBACK) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(missing_reason())
        self.bin_dir = bin_dir
        self.host = host
        self.port = free_port(host)
        self.root: Path | None = None
        self.running = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def socket_dsn(self, database: str = "postgres") -> str:
        """The URL through the Unix socket: reachable from inside a test bed's network
        namespaces, where the host's loopback is not."""
        assert self.root is not None, "the server was never started"
        return f"postgresql://postgres@/{database}?host={self.root / 'sockets'}&port={self.port}"

    def create_database(self, name: str) -> None:
        """A fresh, empty database `name` (dropped first if it exists)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')

    @property
    def data(self) -> Path:
        assert self.root is not None, "the server was never started"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "the server was never started"
        return self.root / "server.log"

    def _as_server_user(self, *argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a server binary as `postgres` when we are root, else as ourselves."""
        command = [str(self.bin_dir / str(argv[0])), *map(str, argv[1:])]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        # cwd: the server user may not be able to read ours (initdb and pg_ctl complain)
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False)

    def _init(self) -> None:
        # tempfile's own directory, not pytest's tmp_path: the latter is 0700 and root's
        self.root = Path(tempfile.mkdtemp(prefix="sipshadow-pg-"))
        (self.root / "sockets").mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.root, self.root / "sockets"):
                os.chown(path, user.pw_uid, user.pw_gid)
        done = self._as_server_user("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                    "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        settings = SETTINGS.format(host=self.host, port=self.port, sockets=self.root / "sockets")
        conf = self.data / "postgresql.conf"
        conf.write_text(conf.read_text() + settings)  # the file keeps its owner: we only write into it

    def start(self) -> None:
        """Start the server (initialising the data directory the first time); returns once it
        accepts connections."""
        if self.running:
            return
        if self.root is None:
            self._init()
        done = self._as_server_user("pg_ctl", "start", "-D", self.data, "-l", self.log_file, "-w",
                                    "-t", str(START_TIMEOUT_S), timeout=START_TIMEOUT_S + 10)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {done.stdout.strip()}\n{self.log_tail()}")
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended at once (their clients see the connection
        closed), nothing waits for them."""
        if not self.running:
            return
        done = self._as_server_user("pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "30", timeout=40)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed ({done.returncode}): {done.stdout.strip()}\n{self.log_tail()}")
        self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop (immediately if a fast stop fails) and remove the temporary directory."""
        try:
            self.stop()
        except Exception:
            if self.root is not None:
                self._as_server_user("pg_ctl", "stop", "-D", self.data, "-m", "immediate", "-w", timeout=40)
            self.running = False
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no server log)"

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
