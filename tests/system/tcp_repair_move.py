"""Run inside a fresh network namespace: move an established loopback connection to a new
socket with `sipshadow.net.tcp_repair`, and check that both ends talk on (exit 0, "OK")."""

from __future__ import annotations

import socket
import subprocess
import time

from sipshadow.net.tcp_repair import close_silently, dump, restore

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


if __name__ == "__main__":
    main()
