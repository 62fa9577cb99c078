"""Broadcast and multicast next hops leave the node's service socket (RFC 3261 §18.2.2; root only).

Two namespaces made here and nowhere else: "node" (a real `sipshadow serve` on 198.18.0.2) and
"peer" (198.18.0.3), joined by a veth pair on 198.18.0.0/24. The peer is also the node's member:
it sends an OPTIONS through the node and answers it, as the member, with a 200 whose next Via
(under the node's own, whose branch MAC names the member) is the subnet broadcast, the limited
broadcast or a multicast group; a receiver in the peer (joined to the group, reading each
datagram's destination address with IP_PKTINFO) proves the relayed response went out to that
address.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.bed.testbed import down_all, new_prefix, run_checked
from sipshadow.runtime.status import StatusDocument

NODE, PEER = "198.18.0.2", "198.18.0.3"
SIP_PORT, MEMBER_PORT, RECEIVER_PORT = 5060, 5070, 5080
GROUP = "239.255.0.1"

# Bind the port on every address, join GROUP on the peer's interface, print READY, then one JSON
# line per datagram (payload, source, the destination address it was sent to, its IP TTL) until
# stdin closes.
RECEIVER = f"""
import json, select, socket, sys
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's values; the names are new in Python 3.13
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", {RECEIVER_PORT}))
sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
mreq = socket.inet_aton("{GROUP}") + socket.inet_aton("{PEER}")
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("READY", flush=True)
def drain():
    while select.select([sock], [], [], 0)[0]:
        data, ancillary, _, source = sock.recvmsg(65535, 256)
        seen = {{"data": data.decode(errors="replace"), "from": source[0]}}
        for level, kind, value in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                seen["to"] = socket.inet_ntoa(value[8:12])
            elif level == socket.IPPROTO_IP and kind == socket.IP_TTL:
                seen["ttl"] = int.from_bytes(value[:4], sys.byteorder)
        print(json.dumps(seen), flush=True)
while True:
    ready = select.select([sock, sys.stdin], [], [], 0.05)[0]
    if sock in ready:
        drain()
    if sys.stdin in ready and not sys.stdin.readline():
        drain()
        break
"""


# As the member (argv: node, SIP port, member address, member port, Call-ID, next Via): send an
# OPTIONS through the node from another socket, take the copy the node forwards to the member's
# port and answer it from there, the node's Via kept on top and the next Via under it.
MEMBER = r"""
import socket, sys
node, node_port, peer, member_port, call_id, next_via = sys.argv[1:7]
member = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
member.bind((peer, int(member_port)))
member.settimeout(10)
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.bind((peer, 0))
common = f"From: <sip:alice@example.com>;tag=a1\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
via = f"Via: SIP/2.0/UDP {peer}:{client.getsockname()[1]};branch=z9hG4bKpeer{call_id}\r\n"
head = f"OPTIONS sip:bob@example.com SIP/2.0\r\n{via}Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\n"
request = f"{head}{common}Content-Length: 0\r\n\r\n"
client.sendto(request.encode(), (node, int(node_port)))
data = ""
while f"Call-ID: {call_id}\r\n" not in data:  # (the node's health probes come here too)
    data = member.recv(65535).decode("latin-1")
ours = next(line for line in data.split("\r\n") if line.lower().startswith("via:"))
below = f"Via: SIP/2.0/UDP {next_via};branch=z9hG4bKpeer\r\n"
answer = f"SIP/2.0 200 OK\r\n{ours}\r\n{below}To: <sip:bob@example.com>;tag=b1\r\n{common}Content-Length: 0\r\n\r\n"
member.sendto(answer.encode(), (node, int(node_port)))
print('{"sent": 1}', flush=True)
"""


@dataclass(frozen=True)
class Pair:
    node_ns: str
    peer_ns: str

    def exec_argv(self, namespace: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]


@pytest.fixture
def pair(netns_ok: None, request: pytest.FixtureRequest) -> Iterator[Pair]:
    prefix = new_prefix()
    made = Pair(f"{prefix}-node", f"{prefix}-peer")
    request.addfinalizer(lambda: down_all(prefix))  # kills what runs inside, then removes both
    run_checked(["ip", "-batch", "-"], input=f"netns add {made.node_ns}\nnetns add {made.peer_ns}\n")
    for namespace in (made.node_ns, made.peer_ns):
        run_checked(made.exec_argv(namespace, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]))
    run_checked(
        ["ip", "-n", made.node_ns, "-batch", "-"],
        input=f"link set lo up\nlink add v0 type veth peer name v0 netns {made.peer_ns}\n"
        f"addr add {NODE}/24 dev v0\nlink set v0 up\n",
    )
    run_checked(
        ["ip", "-n", made.peer_ns, "-batch", "-"], input=f"link set lo up\naddr add {PEER}/24 dev v0\nlink set v0 up\n"
    )
    yield made


def inject(pair: Pair, next_via: str, call_id: str) -> None:
    """Have the node relay a 200 to `next_via`, answered by the peer as the member (`MEMBER`)."""
    argv = [sys.executable, "-c", MEMBER, NODE, str(SIP_PORT), PEER, str(MEMBER_PORT), call_id, next_via]
    sent = subprocess.run(pair.exec_argv(pair.peer_ns, argv), capture_output=True, text=True, timeout=20, check=False)
    assert json.loads(sent.stdout) == {"sent": 1}, sent.stderr


def wait_for_status(alg: AlgProcess, timeout_s: float = 10.0) -> StatusDocument:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return alg.status()
        except (OSError, ValueError):
            assert time.monotonic() < deadline, alg.log_file.read_text() if alg.log_file.exists() else "no log"
            time.sleep(0.05)


def test_broadcast_and_multicast_next_hops_are_sent(pair: Pair, tmp_path: Path) -> None:
    alg = AlgProcess(
        (NODE, SIP_PORT), [(PEER, MEMBER_PORT)], tmp_path, config_text="[status]\ninterval_s = 0.1\n",
        ready="none", netns=pair.node_ns,
    )  # fmt: skip
    receiver = subprocess.Popen(
        pair.exec_argv(pair.peer_ns, [sys.executable, "-c", RECEIVER]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None and receiver.stderr is not None
        if receiver.stdout.readline().strip() != "READY":
            receiver.kill()
            pytest.fail(f"the receiver did not start: {receiver.stderr.read()}")
        with alg:
            wait_for_status(alg)
            hops = {"subnet-broadcast": "198.18.0.255", "limited-broadcast": "255.255.255.255", "multicast": GROUP}
            for call_id, host in hops.items():
                inject(pair, f"{host}:{RECEIVER_PORT}", call_id)
            time.sleep(0.5)
            status = alg.status()
        out, err = receiver.communicate(timeout=10)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    got = [json.loads(line) for line in out.splitlines() if line.strip()]
    by_call = {next(c for c in hops if f"Call-ID: {c}" in item["data"]): item for item in got}
    assert {call: item["to"] for call, item in by_call.items()} == hops, (got, err)
    assert all(item["from"] == NODE and "z9hG4bKss" not in item["data"] for item in got), got
    assert len(got) == len(hops), got
    assert by_call["multicast"]["ttl"] == 1, got  # §18.2.2: no Via ttl, so the socket's TTL of 1
    for name in ("send_errors", "send_failures", "family_mismatches", "unresolvable", "self_loops"):
        assert getattr(status, name) == 0, status
