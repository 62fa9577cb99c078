"""One shell for the lab's child processes: SIPp, Kamailio, `sipshadow serve`, the pinger.

Every child starts in its own session: a Ctrl-C in the terminal does not reach it before its
driver has decided how to stop it, and one `killpg` reaches every worker it forked (Kamailio).
A child may run inside a test-bed network namespace behind `ip netns exec NS`, which execs in
place, so the pid held here is the program's own (signals, /proc, CPU time all mean it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


def in_namespace(argv: Sequence[str], namespace: str | None) -> list[str]:
    """argv, run inside the named network namespace when one is given."""
    return ["ip", "netns", "exec", namespace, *argv] if namespace else list(argv)


def sigkill(pids: Iterable[int]) -> list[int]:
    """SIGKILL each pid; return those that were still there to be signalled."""
    signalled: list[int] = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    return signalled


class ChildExited(RuntimeError):
    """The child ended while its driver waited for it to become ready."""

    def __init__(self, argv: Sequence[str], returncode: int) -> None:
        super().__init__(f"{argv[0] if argv else 'child'} exited with {returncode} before it was ready")
        self.returncode = returncode


class ChildProcess:
    """A child in its own session, stdin from /dev/null, stdout and stderr into one log file.

    One object may start several children in turn (a retry after a bind race), never two at once.
    """

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        self.argv: tuple[str, ...] = ()
        #: time.monotonic() at the last start, for drivers that budget a run's whole duration
        self.started_at = 0.0
        #: Variables added to the inherited environment (systemd's NOTIFY_SOCKET, in a test).
        self.extra_env: dict[str, str] = {}

    def start(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        namespace: str | None = None,
        cwd: Path | None = None,
        append: bool = True,
        echo: bool = False,
    ) -> None:
        """Start argv (inside `namespace`), its output going to `log`.

        `append=False` truncates the log first; `echo` writes `$ argv` into it first, so a log
        says how its program was started.
        """
        if self.running():
            raise RuntimeError(f"{self.argv[0]} is already running as pid {self.pid}")
        self.argv = tuple(in_namespace(argv, namespace))
        with log.open("ab" if append else "wb") as out:  # the child keeps its own descriptor
            if echo:
                out.write(("$ " + " ".join(self.argv) + "\n").encode())
                out.flush()
            self.popen = subprocess.Popen(
                self.argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, **self.extra_env} if self.extra_env else None,
            )  # fmt: skip
        self.started_at = time.monotonic()

    def _started(self) -> subprocess.Popen[bytes]:
        if self.popen is None:
            raise RuntimeError("the child process was never started")
        return self.popen

    @property
    def pid(self) -> int:
        """The child's pid, also its process group and session id."""
        return self._started().pid

    def poll(self) -> int | None:
        """The exit code once the child has ended (negative: killed by that signal), else None."""
        return None if self.popen is None else self.popen.poll()

    def running(self) -> bool:
        """True between start and the child's end."""
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the child to end; its exit code, or None if it still runs after timeout_s."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: signal.Signals) -> bool:
        """Send sig to the child itself (not its group); False when it has already ended."""
        if not self.running():
            return False
        self._started().send_signal(sig)
        return True

    def kill(self, timeout_s: float | None = None) -> int | None:
        """SIGKILL the child itself, as a crash would, and reap it; its exit code."""
        self.signal(signal.SIGKILL)
        return self.wait(timeout_s)

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float, *, poll_s: float = 0.02) -> None:
        """Call probe every poll_s until it says yes.

        Raises ChildExited when the child ends first and TimeoutError at the deadline; the child
        is then left as it is, for its driver to stop and to explain in its own words.
        """
        popen = self._started()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            returncode = popen.poll()
            if returncode is not None:
                raise ChildExited(self.argv, returncode)
            if probe():
                return
            time.sleep(poll_s)
        raise TimeoutError(f"{self.argv[0]} not ready after {timeout_s} s")

    def stop(self, term_timeout_s: float = 5.0) -> int | None:
        """SIGTERM the child's group, SIGKILL what is left of it after term_timeout_s; the exit code.

        The SIGKILL sweep also runs when the child has ended by itself (workers it forked may
        outlive it), and returns once the group is gone, so no worker keeps a port into the next
        run. None when the child was never started or survives even SIGKILL.
        """
        if self.popen is None:
            return None
        group = self.popen.pid
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(term_timeout_s)
        if self.popen.poll() is None or self.group_pids():
            deadline = time.monotonic() + term_timeout_s
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(term_timeout_s)
            while self.group_pids() and time.monotonic() < deadline:  # orphaned workers: init reaps them
                time.sleep(0.01)
        return self.popen.returncode

    def group_pids(self) -> list[int]:
        """Live pids in the child's process group: the child and the workers it forked."""
        if self.popen is None:
            return []
        group = self.popen.pid
        pids: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == group:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
        return sorted(pids)

    def cpu_seconds(self) -> float:
        """User + system CPU time the group's live processes have used, to see if a run saturated it."""
        user, system = self.cpu_times()
        return user + system

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds the group's live processes have used: system time is the
        kernel's work for them (the sockets' sends and receives above all)."""
        ticks = os.sysconf("SC_CLK_TCK")
        user = system = 0
        for pid in self.group_pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        return user / ticks, system / ticks
