"""Move an established TCP connection to a new socket with Linux TCP repair (CAP_NET_ADMIN).

The groundwork of issue 12's takeover: the shadow must re-create, on its own host, each TCP
connection the primary held, with the sequence numbers, window, options and timestamp the
other end expects, so that the peer never sees a reset or a new handshake. The kernel's
repair mode (`TCP_REPAIR`, as CRIU uses it) lets a socket be read out (`dump`) and a new one
be built from what was read (`restore`) without a packet on the wire:

    dump:     repair on; per queue (send, receive): its sequence number and its bytes;
              MSS, window scales, timestamp, the window state (`TCP_REPAIR_WINDOW`)
    restore:  new socket, repair on; the sequence numbers; bind, connect (no SYN in repair);
              MSS, window scales, SACK, timestamps; the timestamp; the queues; the window;
              repair off

The send queue holds the bytes the peer has not acknowledged yet (and any not sent); they go
out again from the new socket as retransmissions. The receive queue holds bytes the kernel
acknowledged and the application never read. A socket closed while in repair mode leaves
without a FIN or a reset (`close_silently`).
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from dataclasses import dataclass

from sipshadow.core.actions import Address

# <linux/tcp.h>
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
IP_FREEBIND = 15  # <linux/in.h>
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>: past wmem_max, with CAP_NET_ADMIN
MIN_BUFFER_BYTES = 256 * 1024
_STABLE_TRIES = 8
# <linux/sockios.h>: bytes in the receive queue, bytes in the send queue
SIOCINQ, SIOCOUTQ = 0x541B, 0x5411
#: struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup (u32 each).
REPAIR_WINDOW = struct.Struct("=5I")
#: struct tcp_info up to tcpi_rcv_wscale: state, ca_state, retransmits, probes, backoff,
#: options, then a byte of two 4-bit window scales (snd low, rcv high).
_INFO_HEAD = struct.Struct("=8B")
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4


@dataclass(frozen=True, slots=True)
class TcpState:
    """What a connection is, to its peer: enough to rebuild it on another socket.

    `send_seq`/`recv_seq`: the sequence number just past each queue's tail (u32; writing a
    queue back in repair mode advances it again, so `restore` starts each queue `len` bytes
    earlier, as CRIU does); `unacked`:
    the send queue's bytes (unacknowledged, or not yet sent); `unread`: the receive queue's
    bytes; `window`: `REPAIR_WINDOW`'s five u32s; `timestamp`: the TCP timestamp clock (ms).
    """

    local: Address
    remote: Address
    send_seq: int
    recv_seq: int
    unacked: bytes
    unread: bytes
    mss: int
    send_wscale: int
    recv_wscale: int
    sack: bool
    timestamps: bool
    timestamp: int
    window: tuple[int, int, int, int, int]


def _u32(value: int) -> bytes:
    """A u32 option value (sequence numbers and timestamps pass 2**31, a C int does not)."""
    return struct.pack("=I", value & 0xFFFFFFFF)


def _queue_size(sock: socket.socket, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


def _read_queue(sock: socket.socket, queue: int, size: int) -> tuple[int, bytes]:
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
    seq = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
    data = sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT) if size else b""  # repair: peek the queue
    if len(data) != size:
        raise OSError(f"queue {queue}: read {len(data)} of {size} bytes")
    return seq & 0xFFFFFFFF, data


def _read_out(sock: socket.socket, send_seq: int, recv_seq: int, unacked: bytes, unread: bytes) -> TcpState:
    """The connection in repair mode on `sock` with these queue positions and bytes: its
    negotiated options, window and timestamp clock read from the kernel."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    options, wscales = _INFO_HEAD.unpack_from(info)[5:7]
    return TcpState(
        local=sock.getsockname()[:2], remote=sock.getpeername()[:2], send_seq=send_seq & 0xFFFFFFFF,
        recv_seq=recv_seq & 0xFFFFFFFF, unacked=unacked, unread=unread,
        mss=sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), send_wscale=wscales & 0xF,
        recv_wscale=wscales >> 4, sack=bool(options & TCPI_OPT_SACK), timestamps=bool(options & TCPI_OPT_TIMESTAMPS),
        timestamp=sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF,
        window=REPAIR_WINDOW.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.size)),
    )  # fmt: skip


def dump(sock: socket.socket) -> TcpState:
    """Read an established connection out of `sock`, which is left in repair mode (close it
    with `close_silently`, or take it out with `sock.setsockopt(IPPROTO_TCP, TCP_REPAIR, 0)`).

    Raises OSError (EPERM without CAP_NET_ADMIN; EINVAL when not established).
    """
    unread_size, unacked_size = _queue_size(sock, SIOCINQ), _queue_size(sock, SIOCOUTQ)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    send_seq, unacked = _read_queue(sock, TCP_SEND_QUEUE, unacked_size)
    recv_seq, unread = _read_queue(sock, TCP_RECV_QUEUE, unread_size)
    return _read_out(sock, send_seq, recv_seq, unacked, unread)


def _read_position(sock: socket.socket) -> int:
    """The sequence number of the next byte the application reads: rcv_nxt less the unread
    bytes. A segment may land between the two reads (repair mode does not stop reception), so
    they are taken again until rcv_nxt stood still around the count of unread bytes."""
    for _ in range(_STABLE_TRIES):
        before = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
        unread = _queue_size(sock, SIOCINQ)
        if sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) == before:
            return int(before - unread)
    raise OSError(errno.EAGAIN, "the receive queue kept moving while it was read")


def peek(sock: socket.socket) -> TcpState:
    """Where a live connection stands, read without disturbing it: repair mode for the few
    system calls it takes (a segment arriving meanwhile is still received).

    `send_seq` is the sequence number of the next byte the application writes, `recv_seq`
    that of the next byte it reads (the unread bytes come after it): where the application's
    own count of bytes begins. The queues' bytes are not read (`unacked`, `unread` empty).
    Raises OSError (EPERM without CAP_NET_ADMIN).
    """
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        send_seq = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        return _read_out(sock, send_seq, _read_position(sock), b"", b"")
    finally:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)


def close_silently(sock: socket.socket) -> None:
    """Close a socket in repair mode: no FIN, no reset; the peer sees nothing."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    sock.close()


def restore(state: TcpState) -> socket.socket:
    """A new socket carrying the connection `state` describes, out of repair mode and ready.

    The local address must be free on this host (the old socket closed, or on another host).
    Raises OSError.
    """
    family = socket.AF_INET6 if ":" in state.local[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:  # the VIP may not be on this host yet: takeover adds it after
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, _u32(state.send_seq - len(state.unacked)))
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, _u32(state.recv_seq - len(state.unread)))
        sock.bind(state.local)
        sock.connect(state.remote)  # in repair mode: straight to established, nothing sent
        options = [(TCPOPT_MSS, state.mss)]
        if state.send_wscale or state.recv_wscale:
            options.append((TCPOPT_WINDOW, state.send_wscale | (state.recv_wscale << 16)))
        if state.sack:
            options.append((TCPOPT_SACK_PERM, 0))
        if state.timestamps:
            options.append((TCPOPT_TIMESTAMP, 0))
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, b"".join(struct.pack("=II", *o) for o in options))
        if state.timestamps:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, _u32(state.timestamp))
        # The queues must fit their buffers at once (nothing drains them in repair mode): room
        # for twice their bytes (the kernel counts overhead), past wmem_max/rmem_max if need be.
        sock.setblocking(False)  # a queue that does not fit fails here rather than hangs
        if state.unacked:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, max(2 * len(state.unacked), MIN_BUFFER_BYTES))
            sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
            sock.sendall(state.unacked)
        if state.unread:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, max(2 * len(state.unread), MIN_BUFFER_BYTES))
            sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
            sock.sendall(state.unread)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.pack(*state.window))
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
    except OSError:
        sock.close()
        raise
    return sock
