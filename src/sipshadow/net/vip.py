"""Take the service address in-process: unsilence, move the VIP by netlink, announce it by gratuitous ARP.

Every step avoids fork/exec (a process per step costs 5-7 ms; the whole in-process takeover a few
ms): nft rules go through libnftables (`net/nft.py`), the address moves with two rtnetlink messages
sent in ONE datagram (delete from `lo`, add to the service interface), and the gratuitous ARP is
written by a raw AF_PACKET socket. `Takeover` opens everything in advance so `run()` does only the
work; the first ARP burst goes out at once and the rest (default offsets 0, 20, 100 ms) are sent by
`Announcement.finish()` or, without blocking a loop, `await Announcement.finish_async()`.

The VIP goes on the service interface with a short lifetime (`lifetime_s`: IFA_CACHEINFO's valid
and preferred lifetimes, whole seconds) that its owner renews (`hold`, NLM_F_REPLACE refreshes the
lifetime of the address already there). A host whose process died (SIGKILL, the host still up)
stops renewing, and its kernel drops the address within the lifetime: it no longer answers ARP
for the VIP, so a host resolving the VIP afresh finds only the living node.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from dataclasses import dataclass, field

from sipshadow.net import accept, nft, silent

# rtnetlink ------------------------------------------------------------------------------------
NLMSG_ERROR = 2
RTM_NEWADDR = 20
RTM_DELADDR = 21
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_CACHEINFO = 6
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type
_IFA_CACHEINFO = struct.Struct("=IIII")  # ifa_prefered, ifa_valid, cstamp, tstamp (the kernel's stamps)

#: How long the VIP outlives its owner's last renewal (seconds; the kernel counts whole seconds).
VIP_LIFETIME_S = 3

# ARP ------------------------------------------------------------------------------------------
ETH_P_ARP = 0x0806
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST = b"\xff" * 6
MIN_FRAME = 60


class NetlinkError(OSError):
    """The kernel refused an rtnetlink request."""


def _rtattr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\x00" * (-length % 4)


def addr_message(
    kind: int, seq: int, ifindex: int, address: str, prefixlen: int, *, lifetime_s: int | None = None
) -> bytes:
    """An RTM_NEWADDR/RTM_DELADDR request for an IPv4 address, asking for an ack. An add with
    `lifetime_s` gives the address that valid and preferred lifetime (else it is permanent);
    NLM_F_REPLACE makes adding an address already there refresh it instead of failing EEXIST."""
    packed = socket.inet_aton(address)
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_REPLACE if kind == RTM_NEWADDR else 0)
    body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, 0, ifindex)
    body += _rtattr(IFA_LOCAL, packed) + _rtattr(IFA_ADDRESS, packed)
    if kind == RTM_NEWADDR and lifetime_s is not None:
        body += _rtattr(IFA_CACHEINFO, _IFA_CACHEINFO.pack(lifetime_s, lifetime_s, 0, 0))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


class Rtnetlink:
    """A NETLINK_ROUTE socket that sends address changes in one datagram and collects the acks."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = int(time.monotonic_ns() & 0x7FFFFFFF)

    def close(self) -> None:
        self._sock.close()

    def change(
        self, changes: list[tuple[int, str, str, int]], *, ignore: frozenset[int] = frozenset(),
        lifetime_s: int | None = None,
    ) -> None:  # fmt: skip
        """Apply (kind, ifname, address, prefixlen) changes in order, in one send; raise on any error
        not ignored. `lifetime_s` applies to the adds in the batch (None: permanent addresses)."""
        batch = b""
        pending: dict[int, tuple[int, str, str, int]] = {}
        for change in changes:
            kind, ifname, address, prefixlen = change
            self._seq += 1
            pending[self._seq] = change
            index = socket.if_nametoindex(ifname)
            batch += addr_message(kind, self._seq, index, address, prefixlen, lifetime_s=lifetime_s)
        self._sock.send(batch)
        failures: list[str] = []
        while pending:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_ERROR and seq in pending:
                    (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    change = pending.pop(seq)
                    if code and -code not in ignore:
                        verb = "add" if change[0] == RTM_NEWADDR else "delete"
                        failures.append(
                            f"{verb} {change[2]}/{change[3]} on {change[1]}: {errno.errorcode.get(-code, code)}"
                        )
                offset += max(length + (-length % 4), _NLMSGHDR.size)
        if failures:
            raise NetlinkError("; ".join(failures))


def hold(ifname: str, vip: str, prefixlen: int = 32, lifetime_s: int = VIP_LIFETIME_S) -> None:
    """(Re)add the VIP on ifname with `lifetime_s`: a renewal while it is there, an add if not."""
    link = Rtnetlink()
    try:
        link.change([(RTM_NEWADDR, ifname, vip, prefixlen)], lifetime_s=lifetime_s)
    finally:
        link.close()


def removals(ifname: str, vip: str, keep: int | None = None) -> list[tuple[int, str, str, int]]:
    """`Rtnetlink.change` entries deleting the VIP from ifname at every prefix length (32..8)
    but `keep`; run them ignoring EADDRNOTAVAIL and ENOENT (the lengths it is not at)."""
    return [(RTM_DELADDR, ifname, vip, length) for length in range(32, 7, -1) if length != keep]


def drop_other_lengths(ifname: str, vip: str, keep: int = 32) -> None:
    """Delete the VIP from ifname at every prefix length (8..32) but `keep` (a copy put there by
    hand, or by a test bed, would never expire)."""
    link = Rtnetlink()
    try:
        link.change(removals(ifname, vip, keep), ignore=frozenset({errno.EADDRNOTAVAIL, errno.ENOENT}))
    finally:
        link.close()


# gratuitous ARP -------------------------------------------------------------------------------
def arp_frame(op: int, src_mac: bytes, src_ip: str, dst_mac: bytes, target_mac: bytes, target_ip: str) -> bytes:
    """An Ethernet II ARP frame for IPv4, padded to the 60-byte minimum."""
    frame = dst_mac + src_mac + struct.pack("!H", ETH_P_ARP)
    frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
    frame += src_mac + socket.inet_aton(src_ip) + target_mac + socket.inet_aton(target_ip)
    return frame + b"\x00" * (MIN_FRAME - len(frame))


def garp_frames(mac: bytes, vip: str) -> tuple[bytes, bytes]:
    """Both gratuitous forms: a broadcast request (sender = target = VIP) and a broadcast reply (tha = sha)."""
    request = arp_frame(ARPOP_REQUEST, mac, vip, BROADCAST, b"\x00" * 6, vip)
    reply = arp_frame(ARPOP_REPLY, mac, vip, BROADCAST, mac, vip)
    return request, reply


class GarpSender:
    """A raw AF_PACKET socket on ifname with the VIP's two gratuitous ARP frames ready."""

    def __init__(self, ifname: str, vip: str) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only, never receive
        try:
            self._sock.bind((ifname, 0))
            self.mac: bytes = self._sock.getsockname()[4]
        except OSError:
            self._sock.close()
            raise
        if len(self.mac) != 6:
            self._sock.close()
            raise OSError(f"{ifname} has no Ethernet address")
        self.ifname = ifname
        self.vip = vip
        self.frames = garp_frames(self.mac, vip)

    def send(self) -> None:
        for frame in self.frames:
            self._sock.send(frame)

    def close(self) -> None:
        self._sock.close()


def garp_offsets(count: int, spacing: float, backoff: float) -> tuple[float, ...]:
    """Send times after the first burst: 0, spacing, spacing*backoff, ... (count in all)."""
    if count < 1:
        raise ValueError("count must be >= 1")
    return (0.0, *(spacing * backoff**k for k in range(count - 1)))


@dataclass
class Announcement:
    """Gratuitous ARP bursts on a schedule; construction sends the first burst immediately."""

    sender: GarpSender
    offsets: tuple[float, ...]
    close_sender: bool = True
    started: float = field(default_factory=time.monotonic)
    sent: int = 0

    def __post_init__(self) -> None:
        self.send_due()

    @property
    def done(self) -> bool:
        return self.sent >= len(self.offsets)

    def send_due(self) -> float | None:
        """Send every burst that is due; return seconds until the next one, or None when all are sent."""
        while not self.done and time.monotonic() - self.started >= self.offsets[self.sent]:
            self.sender.send()
            self.sent += 1
        if self.done:
            if self.close_sender:
                self.sender.close()
            return None
        return max(0.0, self.offsets[self.sent] - (time.monotonic() - self.started))

    def finish(self) -> None:
        """Send the remaining bursts, sleeping in between."""
        while (delay := self.send_due()) is not None:
            time.sleep(delay)

    async def finish_async(self) -> None:
        """Send the remaining bursts without blocking the event loop."""
        while (delay := self.send_due()) is not None:
            await asyncio.sleep(delay)


# takeover -------------------------------------------------------------------------------------
#: How long the tap accept chain outlives the last gratuitous ARP burst: frames peers sent to
#: the old primary's MAC before they took the GARP still reach the new primary (the mirror
#: copies them here), instead of dying as `otherhost` in the takeover's first milliseconds.
TAP_GRACE_S = 0.5


def drop_tap_accept() -> None:
    """End of the takeover: the copies addressed to the old primary's MAC are no longer taken."""
    nft.shared().run(accept.accept_teardown_commands())


async def finish_takeover(announcement: Announcement, grace_s: float = TAP_GRACE_S) -> None:
    """The later GARP bursts on the loop, then, after `grace_s`, the tap accept table goes."""
    await announcement.finish_async()
    await asyncio.sleep(grace_s)
    drop_tap_accept()


@dataclass
class TakeoverResult:
    """Per-step wall times in milliseconds, and the announcement still sending its later bursts."""

    steps_ms: dict[str, float]
    total_ms: float
    announcement: Announcement
    prepare_ms: float = 0.0


class Takeover:
    """Everything a takeover needs, opened in advance (nft context, sockets, frames); run() does the work."""

    def __init__(
        self,
        ifname: str,
        vip: str,
        *,
        prefixlen: int = 32,
        lo: str = "lo",
        count: int = 3,
        spacing: float = 0.02,
        backoff: float = 5.0,
        lifetime_s: int | None = None,
        guard_resets: bool = False,
        move_address: bool = True,
    ) -> None:
        start = time.perf_counter()
        #: False when another owner (keepalived) puts the VIP on the interface: only unsilence
        #: and announce (the copy on `lo` stays; it changes nothing once the node serves).
        self.move_address = move_address
        #: Leave silent mode for `silent.reset_guard` rather than nothing (TCP to rebuild).
        self.guard_resets = guard_resets
        self.ifname, self.vip, self.prefixlen, self.lo = ifname, vip, prefixlen, lo
        self.lifetime_s = lifetime_s  # None: a permanent address (nothing renews it)
        self.offsets = garp_offsets(count, spacing, backoff)
        self._nft = nft.shared()
        self._rtnl = Rtnetlink()
        self._garp = GarpSender(ifname, vip)
        socket.if_nametoindex(lo)
        socket.if_nametoindex(ifname)
        self.prepare_ms = (time.perf_counter() - start) * 1e3
        self._done = False

    def run(self) -> TakeoverResult:
        """(a) leave silent mode, (b) move the VIP, (c) first GARP burst; the tap accept chain
        stays until the announcement is done (`finish_takeover`)."""
        if self._done:
            raise RuntimeError("this takeover already ran")
        self._done = True
        t0 = time.perf_counter()
        leave = silent.reset_guard(self.ifname, self.vip) if self.guard_resets else silent.teardown_commands()
        self._nft.run(leave)  # the tap accept table stays: `drop_tap_accept`
        t1 = time.perf_counter()
        try:
            if self.move_address:
                self._rtnl.change(
                    [(RTM_DELADDR, self.lo, self.vip, 32), (RTM_NEWADDR, self.ifname, self.vip, self.prefixlen)],
                    ignore=frozenset({errno.EADDRNOTAVAIL, errno.ENOENT, errno.EEXIST}),
                    lifetime_s=self.lifetime_s,
                )
        finally:
            self._rtnl.close()
        t2 = time.perf_counter()
        announcement = Announcement(self._garp, self.offsets)
        t3 = time.perf_counter()
        steps = {"nft": (t1 - t0) * 1e3, "vip": (t2 - t1) * 1e3, "garp": (t3 - t2) * 1e3}
        return TakeoverResult(steps, (t3 - t0) * 1e3, announcement, self.prepare_ms)

    def close(self) -> None:
        """Release the sockets if run() was never called."""
        if not self._done:
            self._done = True
            self._rtnl.close()
            self._garp.close()


def takeover(ifname: str, vip: str, *, prefixlen: int = 32, wait: bool = True) -> TakeoverResult:
    """Prepare and run a takeover in this process's namespace; with wait, also send the later GARP bursts."""
    prepared = Takeover(ifname, vip, prefixlen=prefixlen)
    result = prepared.run()
    if wait:
        result.announcement.finish()
        time.sleep(TAP_GRACE_S)
        drop_tap_accept()
    return result
