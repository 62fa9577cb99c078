"""Run inside a fresh network namespace: move an established loopback connection to a new
socket with `sipshadow.net.tcp_repair`, and check that both ends talk on (exit 0, "OK")."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from sipshadow.net.tcp_repair import TcpState, close_silently, dump, restore

TCP_ESTABLISHED = 1


def nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.settimeout(3)
    client.sendall(b"unread-by-the-old-socket;")  # stays in the server's receive queue
    server.sendall(b"delivered-before;")
    assert client.recv(100) == b"delivered-before;"
    client_port = client.getsockname()[1]
    # what the server sends next never reaches the client: only the new socket can deliver it
    rule = f"type filter hook output priority 0;\n tcp dport {client_port} drop"
    nft(f"table inet repair {{\n chain out {{\n {rule}\n }}\n}}\n")
    server.sendall(b"unacked-by-the-peer;")
    time.sleep(0.05)
    state = dump(server)
    assert state.unacked == b"unacked-by-the-peer;" and state.unread == b"unread-by-the-old-socket;", state
    close_silently(server)
    listener.close()
    moved = restore(state)
    moved.settimeout(3)
    nft("delete table inet repair\n")
    assert moved.recv(100) == b"unread-by-the-old-socket;"
    received = b""
    while len(received) < len(b"unacked-by-the-peer;"):
        received += client.recv(100)
    assert received == b"unacked-by-the-peer;", received
    client.sendall(b"after;")
    assert moved.recv(100) == b"after;"
    moved.sendall(b"back;")
    assert client.recv(100) == b"back;"
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_ESTABLISHED
    print("OK", state.mss, state.send_wscale, state.recv_wscale, state.sack, state.timestamps)


# -- across hosts: run in the test bed's namespaces, driven through stdin and stdout ----------


def to_json(state: TcpState) -> str:
    fields = {name: getattr(state, name) for name in TcpState.__slots__}
    return json.dumps({k: v.hex() if isinstance(v, bytes) else v for k, v in fields.items()})


def from_json(text: str) -> TcpState:
    raw = json.loads(text)
    raw["unacked"], raw["unread"] = bytes.fromhex(raw["unacked"]), bytes.fromhex(raw["unread"])
    raw["local"], raw["remote"], raw["window"] = tuple(raw["local"]), tuple(raw["remote"]), tuple(raw["window"])
    return TcpState(**raw)


def serve(vip: str, port: int) -> None:
    """The primary: accept, talk, and at "dump" on stdin print the connection's state and
    leave without a FIN."""
    listener = socket.socket()
    listener.bind((vip, port))
    listener.listen()
    print("listening", flush=True)
    server, _ = listener.accept()
    assert server.recv(100) == b"hello;"
    server.sendall(b"hi;")
    sys.stdin.readline()
    state = dump(server)
    close_silently(server)
    print(to_json(state), flush=True)


def call(vip: str, port: int) -> None:
    """The client: connect, talk, and at "go" on stdin talk again to whoever holds the VIP now."""
    client = socket.create_connection((vip, port), timeout=5)
    client.sendall(b"hello;")
    assert client.recv(100) == b"hi;"
    print("talking", flush=True)
    sys.stdin.readline()
    client.sendall(b"after-the-move;")
    assert client.recv(100) == b"moved:after-the-move;"
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_ESTABLISHED
    print("OK", flush=True)


def take_over() -> None:
    """The shadow: rebuild the connection from the state on stdin and answer on it."""
    moved = restore(from_json(sys.stdin.readline()))
    moved.settimeout(5)
    print("restored", flush=True)
    data = moved.recv(100)
    moved.sendall(b"moved:" + data)
    print("answered", flush=True)
    sys.stdin.readline()  # hold the connection until the client has looked at it


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "local"
    if mode == "local":
        main()
    elif mode == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif mode == "call":
        call(sys.argv[2], int(sys.argv[3]))
    else:
        take_over()
