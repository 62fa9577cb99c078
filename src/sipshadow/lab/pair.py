"""A primary/shadow pair of `sipshadow serve` children on loopback (forward mode)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from sipshadow.core.actions import Address
from sipshadow.lab.alg import AlgProcess, serves_as_primary
from sipshadow.lab.sipp import free_port
from sipshadow.runtime.status import StatusDocument

NODE_CONFIG = """\
[health]
probe_interval_ms = {probe_interval_ms}
[status]
interval_s = 0.1
[control]
socket = "{control}"
[replication]
role = "{role}"
mode = "{mode}"
listen = "127.0.0.1:{own}"
peer = "127.0.0.1:{peer}"
key = "{key}"
output_commit = {output_commit}
heartbeat_interval_ms = {heartbeat_interval_ms}
heartbeat_misses = {heartbeat_misses}
"""


class LoopbackPair:
    """Nodes "a" (configured primary) and "b" (configured shadow) sharing one service address.

    Mode `none` starts node "a" alone. Either node can be killed and restarted; a restarted
    node configured primary finds the serving peer and rejoins as its shadow.
    """

    def __init__(
        self,
        service: Address,
        members: Sequence[Address],
        workdir: Path,
        *,
        mode: str = "active",
        output_commit: bool = True,
        heartbeat_interval_ms: int = 10,
        heartbeat_misses: int = 4,
        probe_interval_ms: int = 500,
        records: str | None = None,
    ) -> None:
        self.service = service
        self.members = list(members)
        self.workdir = workdir
        self.mode = mode
        ports = {"a": free_port(), "b": free_port()}
        key = secrets.token_hex(16)
        settings = dict(mode=mode, key=key, output_commit=str(output_commit).lower(),
                        heartbeat_interval_ms=heartbeat_interval_ms, heartbeat_misses=heartbeat_misses,
                        probe_interval_ms=probe_interval_ms)  # fmt: skip
        #: Each node's control socket (`sipshadow ctl --socket`).
        self.control = {name: workdir / f"control-{name}.sock" for name in "ab"}
        self.configs = {
            "a": NODE_CONFIG.format(role="primary", own=ports["a"], peer=ports["b"], control=self.control["a"],
                                    **settings),
            "b": NODE_CONFIG.format(role="shadow", own=ports["b"], peer=ports["a"], control=self.control["b"],
                                    **settings),
        }  # fmt: skip
        if records:  # one store, a journal per node (kept across its restarts)
            for name in "ab":
                self.configs[name] = (f'[cdr]\nstore = "{records}"\njournal = "{self.journal_of(name)}"\n'
                                      + self.configs[name])  # fmt: skip
        self.replication_ports = ports
        self.nodes: dict[str, AlgProcess] = {}
        self.restarts = 0

    def journal_of(self, name: str) -> Path:
        """Node `name`'s call-record journal (with `records`)."""
        return self.workdir / f"records-{name}.journal"

    def _process(self, name: str, ready: str) -> AlgProcess:
        workdir = self.workdir / f"node-{name}-{self.restarts}"
        return AlgProcess(self.service, self.members, workdir, config_text=self.configs[name], ready=ready)

    def start(self) -> LoopbackPair:
        self.nodes["a"] = self._process("a", "options").start()
        if self.mode != "none":
            self.nodes["b"] = self._process("b", "shadow" if self.mode == "active" else "standby").start()
        return self

    def role_of(self, name: str) -> str:
        try:
            ha = self.nodes[name].status().ha
        except (OSError, ValueError):
            return "unknown"
        return ha.role if ha is not None else "unknown"

    def primary(self) -> str:
        return next(name for name in self.nodes if self.nodes[name].process and self.role_of(name) == "primary")

    def kill(self, name: str) -> float:
        """SIGKILL a node; returns the monotonic time of the kill."""
        self.nodes[name].kill()
        return time.monotonic()

    def wait_for_primary(self, name: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.role_of(name) != "primary":
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {name} did not take over within {timeout_s} s")
            time.sleep(0.02)

    def restart(self, name: str) -> AlgProcess:
        """Start a killed node again; it rejoins as the shadow of the serving peer."""
        self.restarts += 1
        self.nodes[name] = self._process(name, "shadow").start()
        return self.nodes[name]

    def status(self, name: str) -> StatusDocument:
        return self.nodes[name].status()

    def stop(self) -> None:
        """The shadow first: a primary stopped while its shadow runs hands the service over."""
        for node in sorted(self.nodes.values(), key=serves_as_primary):
            node.stop()

    def __enter__(self) -> LoopbackPair:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

