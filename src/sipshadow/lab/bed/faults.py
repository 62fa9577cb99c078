"""Fault injection on a Testbed: a killed process, a crashed box, a partitioned heartbeat link.

- kill: SIGKILL processes inside a host's namespace (the box stays up, its links too).
- crash: the host's service and replication links go down at once, from both sides that belong
  to the box (inside its namespace) and from the switch port, so it looks like a dead machine;
  its peer's replication end stays administratively up and just loses carrier.
- partition: only the replication/heartbeat link goes down; the service network keeps working.
Each has an undo (`recover`, `heal`) so a test can check the way back too.
"""

from __future__ import annotations

from collections.abc import Iterable

from sipshadow.lab.bed.testbed import PAIR, SWITCH, Testbed, run_all
from sipshadow.lab.process import sigkill


def kill(tb: Testbed, host: str = "primary", pids: Iterable[int] | None = None) -> list[int]:
    """SIGKILL pids (default: every process) inside host's namespace; return the pids signalled."""
    inside = set(tb.pids(host))
    return sigkill(sorted(inside if pids is None else inside.intersection(pids)))


def _link_commands(tb: Testbed, host: str, state: str) -> list[tuple[list[str], str]]:
    inside = [f"link set {tb.service_if(host)} {state}"]
    if host in PAIR:
        inside.append(f"link set {tb.replication_if(host)} {state}")
    return [
        (["ip", "-n", tb.ns_name(host), "-batch", "-"], "\n".join(inside) + "\n"),
        (["ip", "-n", tb.ns_name(SWITCH), "link", "set", tb.switch_port(host), state], ""),
    ]


def crash(tb: Testbed, host: str = "primary") -> None:
    """Take host's service and replication links down at once (inside its namespace and at the switch)."""
    run_all(_link_commands(tb, host, "down"))


def recover(tb: Testbed, host: str = "primary") -> None:
    """Bring a crashed host's links back up (addresses stay; routes come back with the links)."""
    run_all(_link_commands(tb, host, "up"))


def partition(tb: Testbed) -> None:
    """Cut only the replication/heartbeat link (the primary's end goes down; the shadow's loses carrier)."""
    tb.ip("primary", "link", "set", tb.replication_if("primary"), "down")


def heal(tb: Testbed) -> None:
    """Undo partition."""
    tb.ip("primary", "link", "set", tb.replication_if("primary"), "up")
