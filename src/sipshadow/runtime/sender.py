"""The one way datagrams leave the service socket: checked, resolved off the loop, never raising.

The core names a next hop as it found it in a Via (RFC 3261 §18.2.2): an IP literal, or a host
name that must be resolved (RFC 3263 §5; A/AAAA only, the core already chose the port). This
shell sends IP literals at once, resolves names with `loop.getaddrinfo` in a task (a small
cache, positive and negative, on the loop clock; a cap on names being resolved and on the
datagrams waiting for each), and drops, counts and (rate-limited) reports every datagram it
cannot send: a literal of the other address family, a name that does not resolve, a
destination that is the node's own service address (it would loop back in), a `sendto` that
fails. Nothing raises out of `send`: a bad Via in one message must not cost the node its
socket, nor a primary its replication link.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from sipshadow.core import SendMessage
from sipshadow.core.actions import Address
from sipshadow.runtime.addresses import IpAddress, ip_literal

log = logging.getLogger("sipshadow.send")


#: The counters `Node.status()` shows, in the order an operator reads them.
COUNTERS = ("send_failures", "family_mismatches", "unresolvable", "resolution_overflow", "self_loops", "resolutions")
_LITERAL_MEMO_ENTRIES = 4096  # verdicts on IP-literal destinations; cleared when full
_WHY = {"family_mismatches": "not the socket's address family", "self_loops": "this node's own address"}


@dataclass(frozen=True, slots=True)
class SendLimits:
    positive_ttl_s: float = 60.0
    negative_ttl_s: float = 10.0
    cache_entries: int = 1024
    pending_names: int = 64  # names being resolved at once; datagrams to one more are dropped
    queued_per_name: int = 32  # datagrams waiting for one name's resolution
    warn_interval_s: float = 10.0


class DatagramSender:
    """Sends a core's `SendMessage`s on one UDP transport; `attach` (re)binds it to a socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: SendLimits | None = None) -> None:
        self.limits = limits or SendLimits()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        self._family = socket.AF_INET
        self._dual_stack = False
        self._own: set[tuple[IpAddress, int]] = set()
        self._wildcard_ports: set[int] = set()
        self._literals: dict[Address, Address | str] = {}  # destination -> sendto address, or a counter
        self._cache: OrderedDict[str, tuple[float, IpAddress | None]] = OrderedDict()
        self._waiting: dict[str, deque[tuple[bytes, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_at = -math.inf
        self._unreported = 0

    # -- the socket and who we are ----------------------------------------------------------

    def attach(self, transport: asyncio.DatagramTransport, own: Iterable[Address] = ()) -> None:
        """Send on `transport`; `own` adds addresses that are this node too (advertised, aliases)."""
        self._transport = transport
        sock = transport.get_extra_info("socket")
        bound = transport.get_extra_info("sockname") or ("0.0.0.0", 0)
        self._family = sock.family if sock is not None else (socket.AF_INET6 if len(bound) == 4 else socket.AF_INET)
        self._dual_stack = False
        if self._family == socket.AF_INET6 and sock is not None:
            try:
                self._dual_stack = not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            except OSError:
                self._dual_stack = False
        self._own.clear()
        self._wildcard_ports.clear()
        for host, port in [tuple(bound[:2]), *own]:
            address = ip_literal(str(host).strip("[]"))
            if address is None or not port:
                continue
            address = _unmapped(address)
            if address.is_unspecified:
                self._wildcard_ports.add(int(port))
            self._own.add((address, int(port)))
        self._literals.clear()
        self._cache.clear()  # what a name resolved to depends on the socket's family

    # -- sending ----------------------------------------------------------------------------

    def send(self, outputs: Iterable[SendMessage]) -> None:
        for output in outputs:
            try:
                self._send_one(output[0], output[1])
            except Exception as error:  # a bug here must not cost the caller its socket or link
                self._drop("send_failures", output[1], f"{type(error).__name__}: {error}")

    def _send_one(self, data: bytes, destination: Address) -> None:
        verdict = self._literals.get(destination)
        if verdict is None:
            host, port = destination
            if not isinstance(port, int) or not 0 < port < 65536:
                self._drop("send_failures", destination, "bad port")
                return
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            address = ip_literal(host)
            if address is None:
                self._send_to_name(data, host, port)
                return
            verdict = self._check(address, port)
            if len(self._literals) >= _LITERAL_MEMO_ENTRIES:
                self._literals.clear()
            self._literals[destination] = verdict
        if isinstance(verdict, str):
            self._drop(verdict, destination, _WHY[verdict])
        else:
            self._sendto(data, verdict)

    def _check(self, address: IpAddress, port: int) -> Address | str:
        """Where `sendto` must go for this literal, or the counter it is dropped under."""
        fitted = self._fit(address)
        if fitted is None:
            return "family_mismatches"
        if self._is_self(address, port):
            return "self_loops"
        return (str(fitted), port)

    def _fit(self, address: IpAddress) -> IpAddress | None:
        """The address in the socket's family (v4 as v4-mapped on a dual-stack v6 socket), or None."""
        if self._family == socket.AF_INET:
            address = _unmapped(address)
            return address if isinstance(address, ipaddress.IPv4Address) else None
        if isinstance(address, ipaddress.IPv6Address):
            return address
        return ipaddress.IPv6Address(f"::ffff:{address}") if self._dual_stack else None

    def _is_self(self, address: IpAddress, port: int) -> bool:
        address = _unmapped(address)
        if (address, port) in self._own:
            return True
        if address.is_unspecified:  # sent to "any" lands on this host
            return any(own_port == port for _, own_port in self._own)
        return address.is_loopback and port in self._wildcard_ports

    def _sendto(self, data: bytes, address: Address) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._drop("send_failures", address, "socket closed")
            return
        try:
            transport.sendto(data, address)
        except (OSError, ValueError, TypeError, OverflowError) as error:
            self._drop("send_failures", address, str(error))

    # -- names ------------------------------------------------------------------------------

    def _send_to_name(self, data: bytes, host: str, port: int) -> None:
        name = host.lower()
        if not name:
            self._drop("unresolvable", (host, port), "empty host")
            return
        cached = self._cache.get(name)
        if cached is not None:
            expires, address = cached
            if expires > self._loop.time():
                self._send_resolved(data, name, address, port)
                return
            del self._cache[name]
        queue = self._waiting.get(name)
        if queue is None:
            if len(self._waiting) >= self.limits.pending_names:
                self._drop("resolution_overflow", (host, port), "too many names being resolved")
                return
            queue = self._waiting[name] = deque()
            self.counters["resolutions"] += 1
            task = self._loop.create_task(self._resolve(name, port))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(queue) >= self.limits.queued_per_name:
            self._drop("resolution_overflow", (host, port), "too many datagrams waiting for the name")
            return
        queue.append((data, port))

    async def _resolve(self, name: str, port: int) -> None:
        address: IpAddress | None = None
        try:
            flags = socket.AI_V4MAPPED if self._dual_stack else 0
            infos = await self._loop.getaddrinfo(name, port, family=self._family, type=socket.SOCK_DGRAM, flags=flags)
            for info in infos:
                found = ip_literal(str(info[4][0]))
                if found is not None and self._fit(found) is not None:
                    address = found
                    break
        except asyncio.CancelledError:
            self._waiting.pop(name, None)
            raise
        except Exception as error:  # gaierror, UnicodeError for a malformed name, anything else
            log.debug("cannot resolve %r: %s", name, error)
        try:
            ttl = self.limits.positive_ttl_s if address is not None else self.limits.negative_ttl_s
            self._cache[name] = (self._loop.time() + ttl, address)
            self._cache.move_to_end(name)
            while len(self._cache) > self.limits.cache_entries:
                self._cache.popitem(last=False)
            for data, wanted_port in self._waiting.pop(name, ()):
                self._deliver(data, name, address, wanted_port)
        except Exception as error:
            self._drop("send_failures", (name, port), f"{type(error).__name__}: {error}")

    def _deliver(self, data: bytes, name: str, address: IpAddress | None, port: int) -> None:
        """One datagram that waited for its name: sent or dropped, never raising."""
        try:
            self._send_resolved(data, name, address, port)
        except Exception as error:
            self._drop("send_failures", (name, port), f"{type(error).__name__}: {error}")

    def _send_resolved(self, data: bytes, name: str, address: IpAddress | None, port: int) -> None:
        if address is None:
            self._drop("unresolvable", (name, port), "name does not resolve")
            return
        verdict = self._check(address, port)
        if isinstance(verdict, str):
            self._drop(verdict, (name, port), f"{_WHY[verdict]}, resolved to {address}")
        else:
            self._sendto(data, verdict)

    # -- reporting and shutdown -------------------------------------------------------------

    def _drop(self, counter: str, destination: object, why: str) -> None:
        """Count a datagram that did not go out; warn at most once per `warn_interval_s`."""
        self.counters[counter] += 1
        now = self._loop.time()
        if now - self._warned_at < self.limits.warn_interval_s:
            self._unreported += 1
            return
        log.warning(
            "dropped a datagram to %r (%s); %d other drops since the last warning; totals %s",
            destination, why, self._unreported, self.counters,
        )  # fmt: skip
        self._warned_at = now
        self._unreported = 0

    def close(self) -> None:
        """Forget the socket; resolutions under way are cancelled, their datagrams dropped."""
        for task in list(self._tasks):
            task.cancel()
        self._waiting.clear()
        self._transport = None


def _unmapped(address: IpAddress) -> IpAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
