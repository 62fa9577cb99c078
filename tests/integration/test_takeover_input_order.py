"""A takeover serves on a socket that was already receiving (the tap's, or the old primary's
handed over): what arrives meanwhile must wait, not vanish, and come after what the takeover
owes first (its backlog). Real sockets on loopback, a real core."""

from __future__ import annotations

import asyncio
import socket

from sipshadow.core import Gateway, GatewayConfig, MemberSpec
from sipshadow.determinism import SystemEntropy
from sipshadow.runtime.node import Node, adopt_endpoint, bind_udp


def options(call_id: str, port: int, service: int) -> bytes:
    return (f"OPTIONS sip:127.0.0.1:{service} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id}\r\n"
            f"From: <sip:t@127.0.0.1>;tag=t\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()  # fmt: skip


def test_datagrams_that_reach_an_adopted_socket_wait_for_the_backlog_and_are_all_answered() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        service = bind_udp(("127.0.0.1", 0))
        address = service.getsockname()
        config = GatewayConfig(service=address, members=(MemberSpec(("127.0.0.1", 9)),), probe_interval_s=0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        port = client.getsockname()[1]
        transport, endpoint = await adopt_endpoint(service)
        node = Node(Gateway(config, SystemEntropy()))
        try:
            for name in ("late-1", "late-2"):  # reach the socket before the node handles anything
                client.sendto(options(name, port, address[1]), address)
            await asyncio.sleep(0.05)  # the loop reads them meanwhile
            early = _answers(client)
            node.adopt(transport, endpoint, hold=True)
            await asyncio.sleep(0.05)
            node.on_datagram(options("backlog", port, address[1]), ("127.0.0.1", port))  # what the takeover owes
            node.open_input()
            client.sendto(options("after", port, address[1]), address)
            await asyncio.sleep(0.05)
            return early, _answers(client)
        finally:
            node.close()
            client.close()

    early, answered = asyncio.run(scenario())
    assert early == []
    assert answered == ["backlog", "late-1", "late-2", "after"]


def _answers(client: socket.socket) -> list[str]:
    """The Call-IDs of the 200s received so far, in order."""
    call_ids = []
    while True:
        try:
            data = client.recv(65535)
        except BlockingIOError:
            return call_ids
        for line in data.decode().split("\r\n"):
            if line.lower().startswith("call-id:"):
                call_ids.append(line.split(":", 1)[1].strip())
