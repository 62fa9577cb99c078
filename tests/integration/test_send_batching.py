"""A node sends what a loop turn produced together, at the turn's end (`Node.flush`), in order.

A real `Node` on a real loopback socket under uvloop, as `sipshadow serve` runs it. Requests go
in through `on_datagram` within one turn; the member's socket must see none of them before the
turn ends, then all of them, in arrival order. A node closed before its turn ends still sends
what it queued: nothing the core answered is lost at a stop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import uvloop

from sipshadow.core import Gateway, GatewayConfig, MemberSpec
from sipshadow.determinism import SystemEntropy
from sipshadow.runtime.node import Node

LOOPBACK = "127.0.0.1"


def message(index: int) -> bytes:
    """A MESSAGE request for someone else: the node forwards it to its only member."""
    return (
        f"MESSAGE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:5999;branch=z9hG4bKbatch{index}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a{index}\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: batch-{index}@test\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def received(member: socket.socket) -> list[bytes]:
    """Every datagram waiting on `member`, without waiting."""
    found = []
    while True:
        try:
            found.append(member.recv(65535))
        except BlockingIOError:
            return found


def with_node(test: Callable[[Node, socket.socket], Awaitable[None]]) -> None:
    """Run `test` with a node (no probes) serving on loopback whose one member is a bare socket."""
    member = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    member.bind((LOOPBACK, 0))
    member.setblocking(False)

    async def main() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((LOOPBACK, 0))
        service = probe.getsockname()
        probe.close()
        config = GatewayConfig(service, (MemberSpec(member.getsockname()),), probe_interval_s=0)
        node = Node(Gateway(config, SystemEntropy(7)))
        await node.start(service)
        try:
            await test(node, member)
        finally:
            node.close()

    try:
        uvloop.run(main())
    finally:
        member.close()


def test_one_turns_outputs_leave_together_at_its_end_in_order() -> None:
    async def test(node: Node, member: socket.socket) -> None:
        for index in range(3):
            node.on_datagram(message(index), (LOOPBACK, 5999))
        assert node.sent_datagrams == 0 and received(member) == []  # queued: this turn has not ended
        await asyncio.sleep(0)  # the turn ends: its flush runs (a loopback send is delivered at once)
        forwarded = received(member)
        assert [b"Call-ID: batch-%d@test" % index in data for index, data in enumerate(forwarded)] == [True] * 3
        assert node.sent_datagrams == 3

    with_node(test)


def test_a_node_closed_before_its_turn_ends_still_sends_what_it_queued() -> None:
    async def test(node: Node, member: socket.socket) -> None:
        node.on_datagram(message(0), (LOOPBACK, 5999))
        node.close()  # in the same turn: the queued forward goes out before the socket closes
        assert len(received(member)) == 1

    with_node(test)
