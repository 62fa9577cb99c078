"""A small agent the system tests start inside a namespace: receive/send UDP, probe ARP, run a takeover.

Run as `python agent.py COMMAND ...` via `ip netns exec`; results are JSON lines on stdout.
  recv      bind, print READY, then one line per datagram until stdin closes (or --timeout)
  send      send datagrams from a chosen source; print {"sent": n} or {"error": "ENAME"}
  arp-probe broadcast an ARP request for --target and print the replies seen within --wait
  takeover  run sipshadow.net.vip.takeover and print its timings
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import socket
import struct
import sys
import time


def emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def cmd_recv(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.bind, args.port))
    print("READY", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock, sys.stdin], [], [], 0.05)
        if sock in ready:
            data, (host, port) = sock.recvfrom(65535)
            emit({"data": data.decode(errors="replace"), "src": [host, port]})
        elif sys.stdin in ready and not sys.stdin.readline():
            # drain what is already queued, then stop
            while select.select([sock], [], [], 0)[0]:
                data, (host, port) = sock.recvfrom(65535)
                emit({"data": data.decode(errors="replace"), "src": [host, port]})
            return


def cmd_send(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.src or args.sport:
        sock.bind((args.src or "0.0.0.0", args.sport))
    sent = 0
    try:
        for _ in range(args.count):
            sock.sendto(args.payload.encode(), (args.dst, args.dport))
            sent += 1
    except OSError as exc:
        emit({"sent": sent, "error": errno.errorcode.get(exc.errno or 0, str(exc))})
        return
    emit({"sent": sent})


def cmd_arp_probe(args: argparse.Namespace) -> None:
    from sipshadow.net.vip import ARPOP_REPLY, ARPOP_REQUEST, BROADCAST, ETH_P_ARP, arp_frame

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((args.ifname, ETH_P_ARP))
    mac = sock.getsockname()[4]
    sock.send(arp_frame(ARPOP_REQUEST, mac, args.sender_ip, BROADCAST, b"\x00" * 6, args.target))
    replies = []
    deadline = time.monotonic() + args.wait
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        frame = sock.recv(2048)
        op = struct.unpack_from("!H", frame, 20)[0]
        sha, spa = frame[22:28], socket.inet_ntoa(frame[28:32])
        if op == ARPOP_REPLY and spa == args.target:
            replies.append(sha.hex(":"))
    emit({"replies": replies})


def cmd_takeover(args: argparse.Namespace) -> None:
    from sipshadow.net.vip import takeover

    result = takeover(args.ifname, args.vip, prefixlen=args.prefixlen, wait=True)
    emit({"prepare_ms": result.prepare_ms, "steps_ms": result.steps_ms, "total_ms": result.total_ms})


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    recv = sub.add_parser("recv")
    recv.add_argument("--bind", default="0.0.0.0")
    recv.add_argument("--port", type=int, default=5060)
    recv.add_argument("--timeout", type=float, default=30.0)
    send = sub.add_parser("send")
    send.add_argument("--src", default="")
    send.add_argument("--sport", type=int, default=0)
    send.add_argument("--dst", required=True)
    send.add_argument("--dport", type=int, default=5060)
    send.add_argument("--payload", default="hello")
    send.add_argument("--count", type=int, default=1)
    probe = sub.add_parser("arp-probe")
    probe.add_argument("--ifname", default="svc0")
    probe.add_argument("--sender-ip", required=True)
    probe.add_argument("--target", required=True)
    probe.add_argument("--wait", type=float, default=0.3)
    take = sub.add_parser("takeover")
    take.add_argument("--ifname", default="svc0")
    take.add_argument("--vip", required=True)
    take.add_argument("--prefixlen", type=int, default=32)
    args = parser.parse_args()
    {"recv": cmd_recv, "send": cmd_send, "arp-probe": cmd_arp_probe, "takeover": cmd_takeover}[args.command](args)


if __name__ == "__main__":
    main()
