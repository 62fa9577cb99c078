"""Run `sipshadow serve` as a real child process for tests, benchmarks and the lab."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from sipshadow.core.actions import Address
from sipshadow.lab.process import ChildExited, ChildProcess
from sipshadow.runtime.status import StatusDocument, read_status


def options_ping(target: Address, timeout_s: float = 0.2) -> bool:
    """Send one OPTIONS to `target` and say whether a 200 came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(target)  # the right local address, on loopback or in a namespace
        local, port = sock.getsockname()[:2]
        request = (
            f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local}:{port};branch=z9hG4bKping{port}\r\n"
            f"From: <sip:ping@{local}>;tag=ping\r\nTo: <sip:{target[0]}>\r\n"
            f"Call-ID: ping-{port}@{local}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sock.send(request)
        try:
            reply = sock.recv(65535)
        except OSError:
            return False
        return reply.startswith(b"SIP/2.0 200")


class AlgProcess:
    """A `sipshadow serve` child, on loopback or in a test-bed namespace; stopped by SIGTERM."""

    def __init__(
        self,
        listen: Address,
        members: Sequence[Address | str],
        workdir: Path,
        *,
        policy: str = "round-robin",
        config_text: str = "",
        extra_args: Sequence[str] = (),
        ready: str = "options",
        netns: str | None = None,
    ) -> None:
        self.listen = listen
        self.members = list(members)
        self.workdir = workdir
        self.policy = policy
        self.config_text = config_text
        self.extra_args = list(extra_args)
        # "options": answers on the service address; "shadow": replica in sync with the primary;
        # "standby": a shadow that sees the primary's heartbeats (network mode); "primary": its
        # status says it serves as primary (inside a namespace, where a ping cannot reach); "none"
        self.ready = ready
        self.netns = netns  # run inside this test-bed namespace
        self.status_file = workdir / "alg-status.json"
        self.log_file = workdir / "alg.log"
        self.child = ChildProcess()

    def command(self) -> list[str]:
        """The `sipshadow serve` argv (without the namespace prefix); writes the config file it names."""
        config = self.workdir / "alg.toml"
        config.write_text(self.config_text or "[status]\ninterval_s = 0.2\n")
        command = [
            sys.executable,
            "-m",
            "sipshadow.cli",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"{self.listen[0]}:{self.listen[1]}",
            "--policy",
            self.policy,
            "--status-file",
            str(self.status_file),
        ]
        for member in self.members:
            command += ["--member", member if isinstance(member, str) else f"{member[0]}:{member[1]}"]
        return command + self.extra_args

    def start(self, ready_timeout_s: float = 10.0) -> AlgProcess:
        """Start the node and wait until it is ready in the sense of `ready`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status_file.unlink(missing_ok=True)  # a previous run's would say "ready" at once
        self.child.start(self.command(), namespace=self.netns, log=self.log_file)
        try:
            self.child.wait_ready(self._is_ready, ready_timeout_s, poll_s=0.0 if self.ready == "options" else 0.02)
        except ChildExited as exited:
            raise RuntimeError(f"sipshadow exited with {exited.returncode}: {self.log_file.read_text()}") from None
        except TimeoutError:
            self.stop()
            what = "answer OPTIONS" if self.ready == "options" else f"become {self.ready}"
            raise RuntimeError(f"sipshadow did not {what} on {self.listen} within {ready_timeout_s} s") from None
        return self

    def _is_ready(self) -> bool:
        if self.ready == "options":  # answering, and its first status file written (`status()` works)
            return self.status_file.exists() and options_ping(self.listen)  # waits up to 0.2 s for the answer
        if self.ready == "none":
            return True
        try:
            ha = self.status().ha
        except (OSError, ValueError):
            return False
        if ha is None:
            return False
        if self.ready == "standby":
            return ha.role == "shadow" and ha.peer_alive
        if self.ready == "primary":
            return ha.role == "primary"
        return ha.shadow is not None and ha.shadow.synced

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running child, for tests that poll it directly."""
        return self.child.popen

    @property
    def returncode(self) -> int | None:
        """The node's exit code once it has ended."""
        return self.child.poll()

    @property
    def pid(self) -> int:
        return self.child.pid

    def kill(self) -> None:
        """SIGKILL: the fail-stop failure of the paper's experiment."""
        self.child.kill()

    def cpu_seconds(self) -> float:
        """User plus system CPU time the node has used so far."""
        return self.child.cpu_seconds()

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds used so far (`ChildProcess.cpu_times`)."""
        return self.child.cpu_times()

    def status(self) -> StatusDocument:
        """The node's last status file (OSError before the first; ValueError if not one)."""
        return read_status(self.status_file)

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit code."""
        return self.child.stop(timeout_s)

    def __enter__(self) -> AlgProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def serves_as_primary(node: AlgProcess) -> bool:
    """Whether the node's last status says it is the primary (False when unreadable): stop
    such a node last, for one stopped while its shadow runs hands the service over."""
    try:
        ha = node.status().ha
    except (OSError, ValueError):
        return False
    return ha is not None and ha.role == "primary"


if __name__ == "__main__":  # `python -m sipshadow.lab.alg ping HOST PORT`, run inside a namespace
    if len(sys.argv) == 4 and sys.argv[1] == "ping":
        sys.exit(0 if options_ping((sys.argv[2], int(sys.argv[3])), timeout_s=0.3) else 1)
    sys.exit("usage: python -m sipshadow.lab.alg ping HOST PORT")
