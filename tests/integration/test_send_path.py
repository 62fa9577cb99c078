"""Next hops the socket cannot take as they are: names, the other family, the node itself (real sockets).

The live tests inject, into a real `sipshadow serve` (uvloop), a response whose top Via is the
ALG's own and whose next Via names the hop under test; the core pops its Via and sends to the
next one. The ALG relays only a response whose branch MAC names where it sent the request, so
each response is made the real way: an OPTIONS goes through the ALG to the test's member
socket, which answers it from there with the ALG's Via on top and the hop under test below.
The shell tests drive `DatagramSender` on a real socket, under both event loops, with what the
core would hand it.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import uvloop

from sipshadow.core import SendMessage
from sipshadow.lab.alg import AlgProcess, options_ping
from sipshadow.lab.pair import LoopbackPair
from sipshadow.lab.sipp import free_port
from sipshadow.runtime.node import open_endpoint
from sipshadow.runtime.sender import DatagramSender, SendLimits

LOOPBACK = "127.0.0.1"
SETTLE_S = 0.3  # long enough for a loopback resolution and a status-file refresh (0.1 s)
_calls = itertools.count()


def response(alg: tuple[str, int], member: socket.socket, next_via: str) -> tuple[bytes, str]:
    """A 200 the ALG relays: its own Via on top, then `next_via`; returns it and its Call-ID.

    An OPTIONS from a client socket goes through the ALG to `member` (the only member), which
    keeps the ALG's Via (its branch MAC names `member`): send the 200 from `member`."""
    call_id = f"send-path-{next(_calls)}-{time.monotonic_ns()}@test"
    common = f"From: <sip:alice@example.com>;tag=a1\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
    with udp_socket() as client:
        host, port = client.getsockname()
        via = f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKclient{next(_calls)}\r\n"
        head = f"OPTIONS sip:bob@example.com SIP/2.0\r\n{via}Max-Forwards: 70\r\n"
        client.sendto(f"{head}To: <sip:bob@example.com>\r\n{common}Content-Length: 0\r\n\r\n".encode(), alg)
    ours = forwarded_via(member, call_id)
    text = (
        f"SIP/2.0 200 OK\r\nVia: {ours}\r\n"
        f"Via: SIP/2.0/UDP {next_via};branch=z9hG4bKclient{next(_calls)}\r\n"
        f"To: <sip:bob@example.com>;tag=b1\r\n{common}Content-Length: 0\r\n\r\n"
    )
    return text.encode(), call_id


def forwarded_via(member: socket.socket, call_id: str, timeout_s: float = 3.0) -> str:
    """The top Via (the ALG's) of the request with `call_id` the ALG forwarded to `member`."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline, f"the ALG did not forward {call_id}"
        try:
            data = member.recv(65535)
        except TimeoutError:
            continue
        if f"Call-ID: {call_id}\r\n".encode() in data:
            top = next(line for line in data.decode("latin-1").split("\r\n") if line.lower().startswith("via:"))
            return top.split(":", 1)[1].strip()


def udp_socket(timeout_s: float = 1.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(timeout_s)
    return sock


def wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def counter_moves(alg: AlgProcess, name: str, expected: int) -> None:
    wait_for(lambda: getattr(alg.status(), name) == expected)


@pytest.fixture
def member() -> Iterator[socket.socket]:
    """The only member: it answers nothing by itself; `response` answers from it."""
    with udp_socket() as sock:
        yield sock


#: No probes: the member socket sees only the tests' requests, and no counter moves by itself.
NO_PROBES = "[health]\nprobe_interval_ms = 0\n[status]\ninterval_s = 0.1\n"


@pytest.fixture
def live_alg(tmp_path: Path, member: socket.socket) -> Iterator[AlgProcess]:
    process = AlgProcess((LOOPBACK, free_port()), [member.getsockname()], tmp_path, config_text=NO_PROBES)
    with process:
        yield process


def inject(target: tuple[str, int], member: socket.socket, next_via: str) -> str:
    """Have the ALG at `target` relay a 200 to `next_via` (see `response`); its Call-ID."""
    datagram, call_id = response(target, member, next_via)
    member.sendto(datagram, target)
    return call_id


# -- the live node (uvloop, as `sipshadow serve` runs) --------------------------------------


def test_a_next_hop_named_localhost_is_resolved_and_reached(live_alg: AlgProcess, member: socket.socket) -> None:
    with udp_socket(timeout_s=3.0) as client:
        port = client.getsockname()[1]
        for _ in range(2):  # the second one comes from the cache
            call_id = inject(live_alg.listen, member, f"localhost:{port}")
            relayed = client.recv(65535)
            assert call_id.encode() in relayed and b"z9hG4bKss" not in relayed
    time.sleep(SETTLE_S)
    status = live_alg.status()
    assert status.resolutions == 1 and status.send_failures == 0, status


@pytest.mark.parametrize(
    ("next_via", "counter"),
    [
        ("[::1]:5099", "family_mismatches"),  # an IPv6 next hop for an IPv4 socket
        ("no-such-host.invalid:5099", "unresolvable"),  # RFC 2606: never resolves
        ("127.0.0.1:5099;received=::1", "family_mismatches"),  # received wins (§18.2.2)
    ],
)
def test_a_next_hop_the_socket_cannot_reach_is_dropped_counted_and_the_node_lives_on(
    live_alg: AlgProcess, member: socket.socket, next_via: str, counter: str
) -> None:
    for expected in (1, 2):
        inject(live_alg.listen, member, next_via)
        counter_moves(live_alg, counter, expected)
    assert options_ping(live_alg.listen, timeout_s=1.0), "the node stopped answering"
    with udp_socket(timeout_s=3.0) as client:  # and it still relays to a good next hop
        call_id = inject(live_alg.listen, member, f"127.0.0.1:{client.getsockname()[1]}")
        assert call_id.encode() in client.recv(65535)
    assert live_alg.process is not None and live_alg.process.poll() is None
    assert "Unhandled exception" not in live_alg.log_file.read_text()


def test_a_next_hop_naming_the_node_itself_is_not_looped_back(live_alg: AlgProcess, member: socket.socket) -> None:
    before = asdict(live_alg.status().counters)
    inject(live_alg.listen, member, f"localhost:{live_alg.listen[1]}")
    wait_for(lambda: live_alg.status().counters.responses > before["responses"])  # the status file lags
    time.sleep(SETTLE_S)  # room for a looped copy to come back in
    status = live_alg.status()
    counters = asdict(status.counters)
    assert counters["responses"] == before["responses"] + 1, "the response came back in: it looped"
    assert counters["stray_responses"] == before["stray_responses"]
    assert counters["forged_responses"] == before["forged_responses"]
    # Dropped by the shell (self loop), or already by the core, which may learn to refuse such a Via.
    core_dropped = any(counters[name] != before[name] for name in counters if name not in ("responses", "requests"))
    assert status.self_loops == 1 or core_dropped, status
    assert options_ping(live_alg.listen, timeout_s=1.0)


def test_a_primary_keeps_its_shadow_through_bad_next_hops(tmp_path: Path, member: socket.socket) -> None:
    """Output commit releases these sends from the replication ack callback: the link must stay up."""
    service = (LOOPBACK, free_port())
    pair = LoopbackPair(service, [member.getsockname()], tmp_path, mode="active", probe_interval_ms=0)
    with pair, udp_socket(timeout_s=3.0) as client:
        primary = pair.nodes["a"]
        for next_via in ("[::1]:5099", "no-such-host.invalid:5099", f"localhost:{service[1]}"):
            inject(service, member, next_via)
        call_id = inject(service, member, f"localhost:{client.getsockname()[1]}")
        assert call_id.encode() in client.recv(65535)
        wait_for(lambda: primary.status().unresolvable == 1)
        status = primary.status()
        replication = status.replication
        assert replication.shadow_attached and replication.shadow_losses == 0, replication
        assert replication.acks >= 1 and replication.release_errors == 0, replication
        assert status.family_mismatches == 1 and status.send_failures == 0, status
        assert pair.role_of("a") == "primary" and pair.status("b").ha.shadow.synced
        assert options_ping(service, timeout_s=1.0)
        assert "Unhandled exception" not in primary.log_file.read_text()


# -- the shell path itself, on both loops ---------------------------------------------------

LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    return LOOPS[request.param]


async def sender_on_socket(limits: SendLimits | None = None) -> tuple[DatagramSender, asyncio.Queue[bytes], int]:
    """A sender on a real service socket bound on loopback, the datagrams that come back to that
    socket, and its port."""
    loop = asyncio.get_running_loop()
    looped: asyncio.Queue[bytes] = asyncio.Queue()
    port = free_port()
    transport, _ = await open_endpoint((LOOPBACK, port), lambda data, source: looped.put_nowait(data))
    sender = DatagramSender(loop, limits)
    sender.attach(transport)
    return sender, looped, port


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_the_node_itself_by_name_or_literal_is_a_self_loop(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def scenario() -> None:
        sender, looped, own_port = await sender_on_socket()
        for host in ("localhost", "LocalHost", "127.0.0.1", "[127.0.0.1]", "0.0.0.0"):
            sender.send([SendMessage(b"SIP/2.0 200 OK\r\n\r\n", (host, own_port))])
        await until(lambda: sender.counters["self_loops"] == 5)
        await asyncio.sleep(0.1)
        assert looped.empty(), "a datagram came back to the node"
        assert sender.counters["send_failures"] == 0 and sender.counters["resolutions"] == 1
        sender.close()

    run(scenario())


def test_sends_to_names_queue_for_one_resolution_and_the_cache_expires(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def scenario() -> None:
        sender, _, _ = await sender_on_socket(SendLimits(positive_ttl_s=0.2, negative_ttl_s=0.2, queued_per_name=3))
        with udp_socket() as client:
            client.setblocking(False)
            target = ("localhost", client.getsockname()[1])
            sender.send([SendMessage(f"{index}".encode(), target) for index in range(4)])  # one over the queue
            assert sender.counters["resolution_overflow"] == 1 and sender.counters["resolutions"] == 1
            got: list[bytes] = []
            loop = asyncio.get_running_loop()
            for _ in range(3):
                got.append(await asyncio.wait_for(loop.sock_recv(client, 100), 3.0))
            assert got == [b"0", b"1", b"2"]  # in order, after the one resolution
            sender.send([SendMessage(b"cached", target)])
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 3.0) == b"cached"
            assert sender.counters["resolutions"] == 1
            await asyncio.sleep(0.25)  # past the positive TTL: resolved again
            sender.send([SendMessage(b"fresh", target)])
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 3.0) == b"fresh"
            assert sender.counters["resolutions"] == 2
        sender.send([SendMessage(b"x", ("nowhere.invalid", 5060))])
        await until(lambda: sender.counters["unresolvable"] == 1)
        sender.send([SendMessage(b"x", ("NOWHERE.invalid", 5070))])  # remembered: no second resolution
        assert sender.counters["unresolvable"] == 2 and sender.counters["resolutions"] == 3
        sender.close()

    run(scenario())


def test_pending_resolutions_are_capped_and_nothing_raises(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def scenario() -> None:
        sender, _, _ = await sender_on_socket(SendLimits(pending_names=2))
        names = [SendMessage(b"x", (f"host{index}.invalid", 5060)) for index in range(3)]
        sender.send(names)
        assert sender.counters["resolutions"] == 2 and sender.counters["resolution_overflow"] == 1
        await until(lambda: sender.counters["unresolvable"] == 2)
        odd: list[Any] = [
            SendMessage(b"x", ("::1", 5060)),  # IPv6 literal, IPv4 socket
            SendMessage(b"x", ("", 5060)),
            SendMessage(b"x", ("127.0.0.1", 0)),
            SendMessage(b"x", ("127.0.0.1", "5060")),  # type: ignore[arg-type] # not even an int
            SendMessage("not bytes", ("127.0.0.1", 5099)),  # type: ignore[arg-type]
            SendMessage(b"x", ("a..b", 5060)),  # not a valid name (IDNA error)
            SendMessage(b"x", ("x" * 300, 5060)),
        ]
        sender.send(odd)
        await until(lambda: sender.counters["resolutions"] == 4 and sender.counters["unresolvable"] == 5)
        counters = sender.counters
        assert counters["family_mismatches"] == 1, counters
        assert counters["unresolvable"] == 2 + 1 + 2, counters  # the two .invalid, "", and the two bad names
        assert counters["send_failures"] == 3, counters  # port 0, port "5060", str payload
        sender.close()

    run(scenario())
