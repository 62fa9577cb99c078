"""keepalived as the pair's failure detector: how fast the VIP moves to the shadow, measured on the test bed.

keepalived (VRRPv3, unicast adverts on svc0) runs in the primary's and the shadow's namespaces for a
VIP the bare bed does not use; its notify hooks append `STATE <monotonic time>` to a file per node
(CLOCK_MONOTONIC is the same in every namespace). A UDP echo bound to the VIP runs on both nodes and
answers with its node's name; a prober in the client namespace sends to the VIP every 2 ms and notes
when the answering node changes. Two faults:

- kill: SIGKILL both keepalived processes of the primary (a crash of keepalived alone: the node,
  its echo and its kernel live on, and nothing removes the VIP from it);
- link-down: the primary's links go down at both ends (`faults.crash`, a dead box).

Each measures the shadow's notify_master and the first answer from the shadow at the client, and
checks them against the VRRP timing: the backup declares the master dead Master_Down_Interval
(3 x advert_int + skew) after the last advert it heard, which came at most one advert_int before
the fault. keepalived must be installed (`make setup`); a missing keepalived fails, it is never a skip.

Run with `python -m tests.system.test_keepalived_netns echo|probe ...` inside a namespace, this
module is also the echo server and the prober.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sipshadow.lab import keepalived as ka
from sipshadow.lab.bed import faults
from sipshadow.lab.bed.testbed import SERVICE_IF, Testbed, Topology

ROOT = Path(__file__).parents[2]
MODULE = "tests.system.test_keepalived_netns"
AGENT = Path(__file__).with_name("agent.py")
ADVERT_INT_S = ka.DEFAULT_ADVERT_INT_S
VRID = 51
PRIORITY = {"primary": 150, "shadow": 100}
ECHO_PORT = 40007
PROBE_INTERVAL_S = 0.002
#: Time not spent waiting for adverts, on top of the VRRP bound: keepalived's timer wake-up, the
#: fork/exec of the notify script and the start of its Python (-I -S, ~10 ms idle), and for the
#: client the GARP, the next probe and its echo. A few ms when idle; this leaves room for a busy
#: 2-core CI box and is still far below one default (1 s) advert interval.
EXEC_SLACK_S = 0.15
#: The link-down fault is two `ip` commands run at once, timed from before they start.
LINK_DOWN_SLACK_S = 0.1
#: How long startup may take: the primary alone must time out once (Master_Down_Interval).
SETTLE_S = 10.0


# -- what runs inside the namespaces ---------------------------------------------------------------
def freebind_socket(bind: str, port: int) -> socket.socket:
    """A UDP socket bound to an address the node may not hold yet (IP_FREEBIND)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND (not exported by the socket module)
    sock.bind((bind, port))
    return sock


def cmd_echo(args: argparse.Namespace) -> None:
    """Answer each datagram to VIP:port with `<name> <payload>`, until stdin closes or --timeout."""
    sock = freebind_socket(args.bind, args.port)
    print("READY", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock, sys.stdin], [], [], 0.5)
        if sock in ready:
            data, peer = sock.recvfrom(2048)
            sock.sendto(args.name.encode() + b" " + data, peer)
        if sys.stdin in ready and not sys.stdin.readline():
            return


def cmd_probe(args: argparse.Namespace) -> None:
    """Send to VIP:port every --interval; print {"from": NAME, "t": monotonic} whenever the answering
    node changes, and stop after the first answer from --until (or at --timeout)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # unconnected: ICMP errors are not raised
    sock.bind(("0.0.0.0", 0))
    print(json.dumps({"ready": True}), flush=True)
    last, seq = "", 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < args.timeout:
        with contextlib.suppress(OSError):  # no route or no neighbour for a moment: keep probing
            sock.sendto(str(seq).encode(), (args.vip, args.port))
        seq += 1
        next_send = now + args.interval
        while (left := next_send - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data, _ = sock.recvfrom(2048)
            name = data.split(b" ", 1)[0].decode()
            if name != last:
                last = name
                print(json.dumps({"from": name, "t": time.monotonic(), "sent": seq}), flush=True)
                if name == args.until:
                    return
    print(json.dumps({"timeout": True, "sent": seq}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--bind", required=True)
    echo.add_argument("--port", type=int, default=ECHO_PORT)
    echo.add_argument("--name", required=True)
    echo.add_argument("--timeout", type=float, default=120.0)
    probe = sub.add_parser("probe")
    probe.add_argument("--vip", required=True)
    probe.add_argument("--port", type=int, default=ECHO_PORT)
    probe.add_argument("--interval", type=float, default=PROBE_INTERVAL_S)
    probe.add_argument("--until", required=True)
    probe.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    {"echo": cmd_echo, "probe": cmd_probe}[args.command](args)


# -- the test's side --------------------------------------------------------------------------------
def free_vip(topology: Topology) -> str:
    """The highest host address of the service network that the bed does not use (its own VIP included)."""
    used = {
        topology.vip,
        topology.primary,
        topology.shadow,
        topology.client,
        *topology.member_addresses,
    }
    for address in reversed(list(topology.service_network.hosts())):
        if str(address) not in used:
            return str(address)
    raise RuntimeError(f"no free address in {topology.service_network}")


def notify_script(path: Path, states: Path) -> Path:
    """A notify hook appending `STATE <CLOCK_MONOTONIC seconds>` to states; STATE is its first argument."""
    writer = "import sys,time;open(sys.argv[1],'a').write('%s %.6f\\n' % (sys.argv[2], time.monotonic()))"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S -c "{writer}" {states} "$1"\n')
    path.chmod(0o755)
    return path


class Helper:
    """One of this module's helpers running in a namespace; its stdout lines arrive through a queue
    (a select() on the pipe would miss lines that readline already buffered)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line(self, timeout_s: float) -> str:
        """The next line it prints; fails the test at the deadline."""
        try:
            return self.lines.get(timeout=timeout_s).strip()
        except queue.Empty:
            self.stop()
            pytest.fail(f"{self.proc.args!r} said nothing within {timeout_s} s (exit {self.proc.returncode})")

    def json(self, timeout_s: float) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.line(timeout_s))
        return parsed

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


@dataclass
class Node:
    host: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def states_file(self) -> Path:
        return self.directory / "states"

    def states(self) -> list[tuple[str, float]]:
        if not self.states_file.exists():
            return []
        lines = self.states_file.read_text().splitlines()
        return [(state, float(t)) for state, t in (line.split() for line in lines if line.strip())]

    def first(self, state: str, after: float = 0.0) -> float | None:
        return next((t for s, t in self.states() if s == state and t >= after), None)

    def last_state(self) -> str | None:
        states = self.states()
        return states[-1][0] if states else None

    def log(self) -> str:
        path = self.directory / "keepalived.log"
        return path.read_text()[-3000:] if path.exists() else ""


@dataclass
class Pair:
    bed: Testbed
    vip: str
    nodes: dict[str, Node]
    helpers: list[Helper] = field(default_factory=list)

    def vip_on(self, host: str) -> bool:
        shown = json.loads(self.bed.ip(host, "-j", "-4", "addr", "show", "dev", SERVICE_IF))
        return any(a["local"] == self.vip for link in shown for a in link.get("addr_info", []))

    def helper(self, host: str, *args: str) -> Helper:
        helper = Helper(self.bed.exec_argv(host, [sys.executable, "-m", MODULE, *args]))
        self.helpers.append(helper)
        return helper

    def arp_replies(self) -> list[str]:
        """MACs that answer a broadcast who-has VIP from the client (raw socket: the client's cache is untouched)."""
        client = self.bed.address_of("client")
        argv = [sys.executable, str(AGENT), "arp-probe", "--sender-ip", client, "--target", self.vip]
        replies: list[str] = json.loads(self.bed.run("client", argv))["replies"]
        return replies

    def client_neighbour(self) -> str | None:
        shown = json.loads(self.bed.ip("client", "-j", "neigh", "show", self.vip, "dev", SERVICE_IF))
        return next((entry.get("lladdr") for entry in shown), None)

    def describe(self) -> str:
        parts = [f"{host}: states {node.states()}\n{node.log()}" for host, node in self.nodes.items()]
        return "\n".join(parts)


def wait_for(what: str, condition: Callable[[], bool], pair: Pair, timeout_s: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}\n{pair.describe()}")
        time.sleep(0.01)


def is_master(pair: Pair, host: str) -> bool:
    return pair.nodes[host].last_state() == "MASTER" and pair.vip_on(host)


def start_node(pair: Pair, host: str, peer: str) -> None:
    node = pair.nodes[host]
    topo = pair.bed.topology
    script = notify_script(node.directory / "notify.sh", node.states_file)
    config = ka.render_config(
        instance="sipshadow",
        interface=SERVICE_IF,
        vip=pair.vip,
        prefix_len=topo.service_prefixlen,
        router_id=VRID,
        priority=PRIORITY[host],
        advert_int_s=ADVERT_INT_S,
        peer=topo.address_of(peer),
        src=topo.address_of(host),
        node=f"sipshadow-{host}",
        notify_master=f"{script} MASTER",
        notify_backup=f"{script} BACKUP",
        notify_fault=f"{script} FAULT",
        state_dir=node.directory,
    )
    config_path = node.directory / "keepalived.conf"
    config_path.write_text(config)
    run_in_namespace = functools.partial(pair.bed.exec_argv, host)
    node.proc = ka.start_keepalived(run_in_namespace, config_path, node.directory, node.directory / "keepalived.log")


@pytest.fixture
def pair(testbed: Testbed, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    """keepalived on primary (150) and shadow (100), the primary MASTER with the VIP; echo on both nodes."""
    if ka.keepalived_binary() is None:
        pytest.fail("keepalived is not installed: run `make setup` (Debian package keepalived)")
    nodes = {host: Node(host, tmp_path / host) for host in ("primary", "shadow")}
    for node in nodes.values():
        node.directory.mkdir()
    pair = Pair(testbed, free_vip(testbed.topology), nodes)

    def cleanup() -> None:
        for helper in pair.helpers:
            helper.stop()
        for node in nodes.values():
            if node.proc is not None:
                ka.stop_keepalived(node.proc)

    request.addfinalizer(cleanup)  # runs before the test bed's own teardown (which kills what is left)

    # The primary starts alone and becomes MASTER after one Master_Down_Interval; the shadow then hears
    # its adverts and stays BACKUP. Started together, whichever finishes its down timer first would win
    # and nopreempt would keep it there: priority decides only within the skew difference (~2 ms here).
    start_node(pair, "primary", "shadow")
    wait_for("the primary is MASTER with the VIP", lambda: is_master(pair, "primary"), pair)
    start_node(pair, "shadow", "primary")
    wait_for("the shadow is BACKUP", lambda: nodes["shadow"].last_state() == "BACKUP", pair)
    assert not pair.vip_on("shadow")

    for host in nodes:
        assert pair.helper(host, "echo", "--bind", pair.vip, "--name", host).line(10) == "READY"
    yield pair


def kill_primary(pair: Pair) -> float:
    proc = pair.nodes["primary"].proc
    assert proc is not None
    os.killpg(proc.pid, signal.SIGKILL)  # parent and VRRP child at once, as crash_keepalived does
    fault_at = time.monotonic()
    ka.crash_keepalived(proc)  # reap
    return fault_at


def link_down_primary(pair: Pair) -> float:
    fault_at = time.monotonic()  # before the commands: the measured times are upper bounds
    faults.crash(pair.bed, "primary")
    return fault_at


@pytest.mark.parametrize("fault", ["kill", "link-down"])
def test_keepalived_moves_the_vip_to_the_shadow(pair: Pair, fault: str, capsys: pytest.CaptureFixture[str]) -> None:
    primary, shadow = pair.nodes["primary"], pair.nodes["shadow"]
    down_s = ka.master_down_interval_s(ADVERT_INT_S, PRIORITY["shadow"])
    slack_s = EXEC_SLACK_S + (LINK_DOWN_SLACK_S if fault == "link-down" else 0.0)
    bound_s = down_s + slack_s
    # the last advert the shadow heard left at most one interval before the fault
    floor_s = down_s - ADVERT_INT_S

    prober = pair.helper("client", "probe", "--vip", pair.vip, "--until", "shadow")
    assert prober.json(10) == {"ready": True}
    before = prober.json(5)
    assert before["from"] == "primary", before  # the client reaches the VIP on the primary

    fault_at = kill_primary(pair) if fault == "kill" else link_down_primary(pair)

    wait_for("the shadow is MASTER", lambda: shadow.first("MASTER", after=fault_at) is not None, pair, timeout_s=5)
    master_at = shadow.first("MASTER", after=fault_at)
    assert master_at is not None
    reached = prober.json(5)
    assert reached.get("from") == "shadow", f"{reached}\n{pair.describe()}"
    notify_s, client_s = master_at - fault_at, reached["t"] - fault_at
    assert pair.vip_on("shadow")

    with capsys.disabled():
        print(
            f"\n[keepalived {fault}] advert_int {ADVERT_INT_S * 1000:.0f} ms,"
            f" Master_Down_Interval {down_s * 1000:.1f} ms:"
            f" shadow notify_master after {notify_s * 1000:.1f} ms, client answered by the shadow after"
            f" {client_s * 1000:.1f} ms (bound {bound_s * 1000:.0f} ms)"
        )
    assert floor_s <= notify_s <= bound_s, f"notify_master {notify_s:.3f} s not in [{floor_s:.3f}, {bound_s:.3f}]"
    assert floor_s <= client_s <= bound_s, f"client reached the shadow after {client_s:.3f} s, bound {bound_s:.3f}"

    if fault == "link-down":
        # the primary's keepalived saw its interface go and went FAULT, dropping the VIP itself
        wait_for("the primary is FAULT", lambda: primary.last_state() == "FAULT", pair, timeout_s=5)
        assert not pair.vip_on("primary")
        return

    # A SIGKILLed keepalived cannot remove the VIP: it stays on the primary's svc0 and the primary's
    # kernel keeps answering ARP for it, next to the new master. Only the shadow's GARPs (and their
    # refresh every GARP_MASTER_REFRESH_S) steer clients away from the old node.
    assert pair.vip_on("primary"), "the killed keepalived's VIP is gone from the primary"
    answers = pair.arp_replies()
    assert set(answers) == {pair.bed.mac_of("primary"), pair.bed.mac_of("shadow")}, answers
    # A client whose entry still names the old node (it missed the GARP burst, or re-resolved and took
    # the old node's answer first) keeps reaching it: its unicast re-probes are answered too. Only the
    # master's periodic GARP (vrrp_garp_master_refresh) corrects it.
    old_mac = pair.bed.mac_of("primary")
    pair.bed.ip("client", "neigh", "replace", pair.vip, "lladdr", old_mac, "dev", SERVICE_IF, "nud", "reachable")
    misled_at = time.monotonic()
    wait_for(
        "the client's ARP entry for the VIP points at the shadow again",
        lambda: pair.client_neighbour() == pair.bed.mac_of("shadow"),
        pair,
        timeout_s=ka.GARP_MASTER_REFRESH_S + 0.5,
    )
    corrected_s = time.monotonic() - misled_at
    with capsys.disabled():
        print(
            f"[keepalived kill] the VIP stays on the killed master, whose kernel answers ARP for it too ({answers});"
            f" a client entry pointing there was corrected by the GARP refresh after {corrected_s * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
