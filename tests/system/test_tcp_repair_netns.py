"""TCP repair in a real network namespace (issue 12's groundwork): an established connection
moves to a new socket with its unread and unacknowledged bytes, and the peer never notices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipshadow.lab.bed.testbed import SERVICE_IF, Testbed

SCRIPT = Path(__file__).with_name("tcp_repair_move.py")
SOURCE = Path(__file__).parents[2] / "src"


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"sstcp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_an_established_connection_moves_to_a_new_socket_and_both_ends_talk_on(namespace: str) -> None:
    run = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, str(SCRIPT)],
        env={**os.environ, "PYTHONPATH": str(SOURCE)}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("OK"), run.stdout + run.stderr


def test_a_connection_moves_from_the_primarys_host_to_the_shadows_and_the_client_talks_on(testbed: Testbed) -> None:
    """The takeover's core, by hand: the primary's host reads the client's connection out and
    drops it without a FIN, the VIP moves to the shadow's host, which rebuilds the connection;
    the client's next bytes reach the shadow, the answer comes back on the same connection,
    and the client's socket is still established (no reset, no new handshake)."""
    vip, port = testbed.topology.vip, 5070
    env = {**os.environ, "PYTHONPATH": str(SOURCE)}
    children: list[subprocess.Popen[str]] = []

    def spawn(host: str, *args: str) -> subprocess.Popen[str]:
        argv = testbed.exec_argv(host, [sys.executable, str(SCRIPT), *args])
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        children.append(child)
        return child

    def say(child: subprocess.Popen[str], line: str) -> None:
        assert child.stdin is not None
        child.stdin.write(line + "\n")
        child.stdin.flush()

    def heard(child: subprocess.Popen[str]) -> str:
        assert child.stdout is not None
        return child.stdout.readline().strip()

    try:
        primary = spawn("primary", "serve", vip, str(port))
        assert heard(primary) == "listening"
        client = spawn("client", "call", vip, str(port))
        assert heard(client) == "talking"
        say(primary, "dump")
        state = heard(primary)
        assert primary.wait(5) == 0 and state.startswith("{"), state
        for entry in json.loads(testbed.ip("primary", "-j", "addr", "show", "dev", testbed.service_if("primary"))):
            for address in entry.get("addr_info", []):
                if address.get("local") == vip:
                    testbed.ip("primary", "addr", "del", f"{vip}/{address['prefixlen']}", "dev", SERVICE_IF)
        testbed.ip("shadow", "addr", "add", f"{vip}/32", "dev", SERVICE_IF)
        testbed.ip("client", "neigh", "flush", "dev", SERVICE_IF)  # as a gratuitous ARP would
        shadow = spawn("shadow", "take_over")
        say(shadow, state)
        assert heard(shadow) == "restored"
        say(client, "go")
        assert heard(shadow) == "answered"
        assert heard(client) == "OK"
        say(shadow, "done")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(5)
