"""A real `sipshadow serve` under systemd's notification protocol: a real NOTIFY_SOCKET (a datagram
socket this test binds, as systemd does) receives READY=1 once the node serves, WATCHDOG=1 every
half WatchdogSec, RELOADING=1 / READY=1 around `ctl reload`, STOPPING=1 at SIGTERM. With
`log.format = "json"` every log line is one JSON object."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUas, free_port

pytestmark = pytest.mark.sipp


def received(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    """Every notification until `until` (monotonic), with its arrival time."""
    messages = []
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            messages.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return messages


def test_serve_speaks_systemds_notify_protocol_and_logs_json(tmp_path: Path, members: list[SippUas]) -> None:
    notify_path, control = tmp_path / "notify.sock", tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        listed = ", ".join(f'"{m.address[0]}:{m.address[1]}"' for m in members)
        node = AlgProcess(("127.0.0.1", free_port()), [], tmp_path / "node", config_text=(
            f'[cluster]\nmembers = [{listed}]\n[status]\ninterval_s = 0.2\n[control]\nsocket = "{control}"\n'
            '[log]\nformat = "json"\n'))  # fmt: skip
        node.child.extra_env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
        with node:
            start = received(notify, time.monotonic() + 1.0)
            reload = subprocess.run([sys.executable, "-m", "sipshadow.cli", "ctl", "--socket", str(control), "reload"],
                                    capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
            around_reload = received(notify, time.monotonic() + 0.3)
        stop = received(notify, time.monotonic() + 0.5)
    texts = [text for _, text in start]
    assert texts[0].startswith("READY=1\nSTATUS=serving as solo"), texts[0]
    pings = [at for at, text in start if text == "WATCHDOG=1"]
    assert len(pings) >= 5, texts  # every 0.1 s for a second
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.3, pings
    assert reload.returncode == 0, reload.stderr
    reload_texts = [text for _, text in around_reload if text != "WATCHDOG=1"]
    assert reload_texts[0].startswith("RELOADING=1\nMONOTONIC_USEC=") and reload_texts[1].startswith("READY=1")
    assert any(text.startswith("STOPPING=1") for _, text in stop), stop
    lines = node.log_file.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records and len(records) == len([line for line in lines if line.strip()]), lines[:5]
    assert {"ts", "level", "logger", "message", "pid"} <= records[0].keys()
    assert any("reloaded" in record["message"] for record in records)
