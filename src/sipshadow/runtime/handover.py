"""A planned switchover on one host (forward mode): the primary gives the shadow its service sockets.

In forward mode both nodes share a host (and network namespace), so the service address cannot
move: it is the same socket that must change hands. Closing it and binding it again would drop
what arrives in between (an ICMP port unreachable for every datagram of the gap); passing the
descriptors (SCM_RIGHTS, unix(7)) loses nothing: what the kernel queued stays queued, and what
the old primary had read but not handled travels with them (`held`).

The primary listens on an abstract UNIX socket named after its replication address (abstract
names are per network namespace, and never touch the file system) only for the moment of a
handoff; the shadow must present the one-time `token` it received inside the authenticated
replication session, and run as the same user (SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from sipshadow.core.actions import Address

TOKEN_BYTES = 32
#: How long either side waits for the other during the transfer (s).
TRANSFER_TIMEOUT_S = 2.0
_LENGTH = struct.Struct("!I")


@dataclass(slots=True)
class ServiceSockets:
    """What changes hands: the UDP socket, the TCP listener (either may be None) and the
    datagrams read but not handled, as (data, (host, port)) in arrival order."""

    udp: socket.socket | None = None
    listener: socket.socket | None = None
    held: list[tuple[bytes, Address]] = field(default_factory=list)

    def close(self) -> None:
        for sock in (self.udp, self.listener):
            if sock is not None:
                sock.close()


def handover_name(replication: Address) -> str:
    """The abstract UNIX socket name of the primary whose replication address is `replication`."""
    return f"\0sipshadow-handover/{replication[0]}:{replication[1]}"


async def give(replication: Address, token: bytes, collect: Callable[[], ServiceSockets],
               timeout_s: float = TRANSFER_TIMEOUT_S) -> bool:  # fmt: skip
    """Primary: wait (up to `timeout_s`) for the shadow to ask with `token`, then hand it what
    `collect()` gives (called only then, so the sockets serve here until the last moment).
    Returns whether the sockets were handed over; raises OSError if the name is taken."""
    loop = asyncio.get_running_loop()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(handover_name(replication))
        server.listen(4)
        server.setblocking(False)
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                conn, _ = await asyncio.wait_for(loop.sock_accept(server), remaining)
            except TimeoutError:
                return False
            with conn:
                if not _same_user(conn) or not hmac.compare_digest(await _read_token(conn, loop), token):
                    continue
                sockets = collect()
                try:
                    await _send(conn, sockets, loop)
                finally:
                    sockets.close()  # our copies: the shadow's are the sockets now
                return True
        return False
    finally:
        server.close()


def take(replication: Address, token: bytes, timeout_s: float = TRANSFER_TIMEOUT_S) -> ServiceSockets:
    """Shadow: collect the primary's service sockets (blocking, bounded by `timeout_s`: a
    takeover does nothing else meanwhile). Raises OSError when it cannot."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(handover_name(replication))
        sock.sendall(token)
        message, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, 2)
        if len(message) < _LENGTH.size:
            _close_all(fds)
            raise OSError("the primary closed the handover without its sockets")
        (length,) = _LENGTH.unpack(message)
        body = _receive_exactly(sock, length)
    try:
        udp_index, listener_index, held = msgspec.msgpack.decode(body)
        sockets = ServiceSockets(
            udp=_socket(fds, udp_index), listener=_socket(fds, listener_index),
            held=[(bytes(data), (str(host), int(port))) for data, host, port in held],
        )  # fmt: skip
    except (msgspec.DecodeError, TypeError, ValueError, IndexError) as error:
        _close_all(fds)
        raise OSError(f"unreadable handover message: {error}") from None
    return sockets


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


async def _read_token(conn: socket.socket, loop: asyncio.AbstractEventLoop) -> bytes:
    data = b""
    while len(data) < TOKEN_BYTES:
        chunk = await asyncio.wait_for(loop.sock_recv(conn, TOKEN_BYTES - len(data)), TRANSFER_TIMEOUT_S)
        if not chunk:
            break
        data += chunk
    return data


async def _send(conn: socket.socket, sockets: ServiceSockets, loop: asyncio.AbstractEventLoop) -> None:
    fds = [sock.fileno() for sock in (sockets.udp, sockets.listener) if sock is not None]
    udp_index = 0 if sockets.udp is not None else -1
    listener_index = (1 if sockets.udp is not None else 0) if sockets.listener is not None else -1
    body = msgspec.msgpack.encode([udp_index, listener_index, [(data, *source) for data, source in sockets.held]])
    conn.setblocking(True)
    conn.settimeout(TRANSFER_TIMEOUT_S)
    socket.send_fds(conn, [_LENGTH.pack(len(body))], fds)
    conn.sendall(body)


def _receive_exactly(sock: socket.socket, length: int) -> bytes:
    chunks, got = [], 0
    while got < length:
        chunk = sock.recv(min(length - got, 1 << 20))
        if not chunk:
            raise OSError("the handover message was cut short")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _socket(fds: list[int], index: int) -> socket.socket | None:
    """The descriptor at `index` as a nonblocking socket (family and type read from the kernel)."""
    if index < 0:
        return None
    sock = socket.socket(fileno=fds[index])
    sock.setblocking(False)
    return sock


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
