"""A man in the middle for the pair's replication port: relays UDP and TCP, records both, injects later.

A `Relay` listens on one port number for UDP and TCP on 127.0.0.1 and forwards to a real
node's replication port, the way a NAT would: each UDP client (source address) gets its own
socket towards the node, and what the node sends back to that socket returns to the client
from the relay's port; each TCP connection is joined to a fresh connection to the node.
Pointing one node's `peer` at a relay in front of the other puts the relay on that node's
beats and on its replication connection. Everything is recorded with the time it passed:
datagrams with their direction and client, TCP chunks per connection and direction
(`UPSTREAM`: client to node, `DOWNSTREAM`: node to client). Recorded bytes can be injected
later into a live connection, between two frames of the pair's framing when the stream can be
framed, or sent as datagrams anywhere on loopback (`send_datagram`, `DatagramReplay`).

Loopback only: every address this module binds or sends to must be 127.0.0.1. Everything
runs in daemon threads of the test process; `Relay.close` ends them and closes every socket.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from sipshadow.lab.sipp import free_port

Address = tuple[str, int]

LOOPBACK = "127.0.0.1"
UPSTREAM = "upstream"  #: client -> node (the shadow's Hello and acks, when the relay fronts the primary)
DOWNSTREAM = "downstream"  #: node -> client (the primary's snapshot and entries)

#: The pair's frame header: magic "SS", version u8, kind u8, body length u32 (network order);
#: the body and a 32-byte MAC follow. Only used to find frame boundaries; nothing is decoded.
HEADER = struct.Struct("!2sBBI")
MAGIC = b"SS"
MAC_BYTES = 32

POLL_S = 0.05  # how often a blocked relay thread looks at the stop flag
CONNECT_TIMEOUT_S = 1.0


def loopback(address: Address) -> Address:
    """`address`, checked to be on loopback (the tests' network rule)."""
    if address[0] != LOOPBACK:
        raise ValueError(f"the relay only works on {LOOPBACK}, not {address[0]}")
    return address


def abort(sock: socket.socket) -> None:
    """Close `sock` with a reset rather than a FIN, so no TIME_WAIT keeps its port: a TCP
    listener may later be bound on a port our ephemeral end used (the pair's ports are picked
    among the same numbers), and a lingering closed client would make that bind fail."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def send_datagram(data: bytes, target: Address) -> None:
    """One datagram to `target`, from an ephemeral port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, loopback(target))


class DatagramReplay:
    """Sends `data` to `target` every `interval_s` for `duration_s`, in a thread; a context
    manager that stops it on exit. `sent` counts the datagrams that left."""

    def __init__(self, data: bytes, target: Address, *, interval_s: float, duration_s: float) -> None:
        self.data = data
        self.target = loopback(target)
        self.interval_s = interval_s
        self.duration_s = duration_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="datagram-replay", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.duration_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    sock.sendto(self.data, self.target)
                    self.sent += 1
                if self._stop.wait(self.interval_s):
                    return

    def start(self) -> DatagramReplay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def __enter__(self) -> DatagramReplay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FrameBoundary:
    """Follows a byte stream in the pair's framing and says whether it sits between frames.

    If the stream stops looking like that framing (a bad magic), `framed` turns False for
    good and every point counts as a boundary: an injection then lands between chunks.
    """

    def __init__(self) -> None:
        self.framed = True
        self._header = bytearray()
        self._remaining = 0  # body and MAC bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        return not self.framed or (not self._header and self._remaining == 0)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.framed:
            if self._remaining:
                step = min(self._remaining, len(view))
                self._remaining -= step
                view = view[step:]
                continue
            step = min(HEADER.size - len(self._header), len(view))
            self._header += view[:step]
            view = view[step:]
            if len(self._header) == HEADER.size:
                magic, _, _, length = HEADER.unpack(self._header)
                self._header.clear()
                if magic != MAGIC:
                    self.framed = False
                    return
                self._remaining = length + MAC_BYTES


def split_frames(data: bytes) -> list[bytes]:
    """The whole frames at the start of `data`, in order (a trailing partial frame is left out).
    Data not in the pair's framing comes back as one piece, unsplit."""
    frames: list[bytes] = []
    offset = 0
    while len(data) - offset >= HEADER.size:
        magic, _, _, length = HEADER.unpack_from(data, offset)
        if magic != MAGIC:
            return frames or [data]
        end = offset + HEADER.size + length + MAC_BYTES
        if end > len(data):
            break
        frames.append(data[offset:end])
        offset = end
    return frames


def whole_frames(data: bytes) -> bytes:
    """`data` cut back to its last whole frame (all of it, when it is not in the pair's framing)."""
    return b"".join(split_frames(data))


@dataclass(frozen=True, slots=True)
class Datagram:
    at: float  #: time.monotonic() when the relay got it
    direction: str  #: UPSTREAM (from the client, on to the node) or DOWNSTREAM (the node's answer)
    client: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    at: float  #: time.monotonic() when the relay passed it on
    direction: str  #: UPSTREAM or DOWNSTREAM
    data: bytes
    injected: bool = False


@dataclass
class RelayedConnection:
    """One client connection joined to its own connection to the node."""

    client: socket.socket
    node: socket.socket
    opened_at: float = field(default_factory=time.monotonic)
    chunks: list[Chunk] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._locks = {UPSTREAM: threading.Lock(), DOWNSTREAM: threading.Lock()}
        self._boundaries = {UPSTREAM: FrameBoundary(), DOWNSTREAM: FrameBoundary()}

    def sent(self, direction: str) -> bytes:
        """Every byte relayed so far in `direction` (injected bytes left out)."""
        return b"".join(
            chunk.data for chunk in list(self.chunks) if chunk.direction == direction and not chunk.injected
        )

    def _destination(self, direction: str) -> socket.socket:
        return self.node if direction == UPSTREAM else self.client

    def pass_on(self, direction: str, data: bytes, *, injected: bool = False) -> None:
        with self._locks[direction]:
            self._destination(direction).sendall(data)
            self._boundaries[direction].feed(data)
            self.chunks.append(Chunk(time.monotonic(), direction, data, injected))

    def inject(self, direction: str, data: bytes, timeout_s: float = 2.0) -> None:
        """Write `data` into the live stream in `direction`, between two frames of what was
        relayed (raises TimeoutError if the stream stays inside a frame that long)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.closed.is_set():
                raise ConnectionError("the relayed connection is closed")
            with self._locks[direction]:
                boundary = self._boundaries[direction]
                if boundary.at_boundary:
                    self._destination(direction).sendall(data)
                    boundary.feed(data)
                    self.chunks.append(Chunk(time.monotonic(), direction, data, injected=True))
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {direction} stream stayed inside a frame for {timeout_s} s")
            time.sleep(0.001)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.node):
            abort(sock)


class Relay:
    """Listens on `port` (UDP and TCP, 127.0.0.1) and forwards both to `target`, recording."""

    def __init__(self, target: Address, port: int | None = None) -> None:
        self.target = loopback(target)
        self.port = port if port is not None else free_port()
        self.datagrams: list[Datagram] = []
        self.connections: list[RelayedConnection] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._listener: socket.socket | None = None

    @property
    def address(self) -> Address:
        return (LOOPBACK, self.port)

    def start(self) -> Relay:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(self.address)
        self._udp.setblocking(False)  # readable by select is no promise: never block in recv
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(self.address)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._spawn(self._relay_datagrams, "relay-udp")
        self._spawn(self._accept, "relay-accept")
        return self

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- UDP ------------------------------------------------------------------------------

    def _relay_datagrams(self) -> None:
        listener = self._udp
        assert listener is not None
        towards_node: dict[Address, socket.socket] = {}  # client -> its own socket to the node
        clients: dict[socket.socket, Address] = {}
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([listener, *clients], [], [], POLL_S)
                for sock in readable:
                    try:
                        data, source = sock.recvfrom(65535)
                    except OSError:  # an ICMP error for an earlier datagram (the node is down), or
                        continue  # nothing after all: a send on the socket took the error select saw
                    if sock is listener:
                        client = source[:2]
                        if client not in towards_node:
                            towards_node[client] = upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            upstream.bind((LOOPBACK, 0))
                            upstream.connect(self.target)
                            upstream.setblocking(False)
                            clients[upstream] = client
                        self.datagrams.append(Datagram(time.monotonic(), UPSTREAM, client, data))
                        with contextlib.suppress(OSError):
                            towards_node[client].send(data)
                    else:
                        self.datagrams.append(Datagram(time.monotonic(), DOWNSTREAM, clients[sock], data))
                        with contextlib.suppress(OSError):
                            listener.sendto(data, clients[sock])
        except (OSError, ValueError):  # the listener was closed under us
            pass
        finally:
            for sock in clients:
                sock.close()

    def datagrams_from_clients(self) -> list[Datagram]:
        """The datagrams the relay passed on to the node, oldest first."""
        return [datagram for datagram in list(self.datagrams) if datagram.direction == UPSTREAM]

    # -- TCP ------------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            readable, _, _ = select.select([listener], [], [], POLL_S)
            if not readable:
                continue
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            try:
                node = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
            except OSError:
                client.close()  # the node is not listening: the client sees a closed connection
                continue
            for sock in (client, node):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = RelayedConnection(client, node)
            self.connections.append(connection)
            self._spawn(self._pump, "relay-up", connection, UPSTREAM)
            self._spawn(self._pump, "relay-down", connection, DOWNSTREAM)

    def _pump(self, connection: RelayedConnection, direction: str) -> None:
        source = connection.client if direction == UPSTREAM else connection.node
        while not self._stop.is_set() and not connection.closed.is_set():
            try:
                readable, _, _ = select.select([source], [], [], POLL_S)
                if not readable:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                connection.pass_on(direction, data)
            except (OSError, ValueError):  # reset, or closed by the other pump
                break
        connection.close()

    def live_connection(self) -> RelayedConnection:
        """The newest relayed connection that is still open."""
        for connection in reversed(list(self.connections)):
            if not connection.closed.is_set():
                return connection
        raise ConnectionError("no relayed connection is open")

    # -- life -----------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        for connection in list(self.connections):
            connection.close()
        for sock in (self._udp, self._listener):
            if sock is not None:
                sock.close()
        for thread in self._threads:
            thread.join(timeout=2.0)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
