"""A packet socket that reads the mirror's TCP segments for the VIP (tap mode, CAP_NET_RAW).

The shadow's kernel has no socket for the primary's TCP connections, so their mirrored
segments reach no application; this cooked `AF_PACKET` socket on the service interface sees
them, and a classic BPF filter in the kernel lets only IPv4 TCP to the VIP through (the UDP
traffic, the bulk of the mirror, never wakes the process). `replication.segments` parses
and keeps them.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
_SNAP = 0x40000  # bytes of a packet the filter passes: all of it
# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}; offsets from the IPv4 header (cooked socket)
_LD_B_ABS, _LD_W_ABS, _JEQ_K, _RET_K = 0x30, 0x20, 0x15, 0x06


def tcp_to(vip: str) -> list[tuple[int, int, int, int]]:
    """The filter program: accept an IPv4 TCP packet whose destination is `vip`, drop the rest."""
    address = int(ipaddress.IPv4Address(vip))
    return [
        (_LD_B_ABS, 0, 0, 9),  # protocol
        (_JEQ_K, 0, 3, socket.IPPROTO_TCP),
        (_LD_W_ABS, 0, 0, 16),  # destination address
        (_JEQ_K, 0, 1, address),
        (_RET_K, 0, 0, _SNAP),
        (_RET_K, 0, 0, 0),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def open_capture(ifname: str, vip: str) -> socket.socket:
    """A non-blocking packet socket on `ifname` passing only IPv4 TCP to `vip`; read it with
    `recvfrom` (skip `PACKET_OUTGOING`). Raises OSError (EPERM without CAP_NET_RAW)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    try:
        program = tcp_to(vip)
        code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *insn) for insn in program))
        fprog = _SockFprog(len(program), ctypes.addressof(code))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        sock.bind((ifname, ETH_P_IP))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
