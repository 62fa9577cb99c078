"""An OPTIONS pinger: round trips to the ALG, and the moment answers stop and resume.

Runs as a thread (benchmarks on loopback) or as `python -m sipshadow.lab.pinger HOST PORT`
inside a test-bed namespace (`PingerProcess`), printing one JSON line per answer at SIGTERM:
the wall-clock send and answer times, so a benchmark in another process can line them up with
a fault it injected.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sipshadow.core.actions import Address
from sipshadow.lab.process import ChildProcess


class Pinger(threading.Thread):
    """Sends OPTIONS to `target` every `interval_s` and records each round trip (or its loss)."""

    def __init__(
        self, target: Address, interval_s: float, timeout_s: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(daemon=True)
        self.clock = clock
        self.target = target
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.samples: list[tuple[float, float]] = []  # (sent at, answered at) on the monotonic clock
        self._halt = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(self.target)  # picks the right local address, here or in a namespace
            local, port = sock.getsockname()[:2]
            sequence = 0
            while not self._halt.is_set():
                sequence += 1
                request = (
                    f"OPTIONS sip:{self.target[0]}:{self.target[1]} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {local}:{port};branch=z9hG4bKping{sequence}\r\n"
                    f"From: <sip:ping@{local}>;tag=p\r\nTo: <sip:{self.target[0]}>\r\n"
                    f"Call-ID: ping-{port}-{sequence}\r\nCSeq: {sequence} OPTIONS\r\nMax-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode()
                sent = self.clock()
                try:
                    sock.send(request)
                except OSError:  # ICMP unreachable from an earlier send, reported on this one
                    sock.send(request)
                if self._await(sock, f"CSeq: {sequence} OPTIONS".encode(), sent):
                    self.samples.append((sent, self.clock()))
                self._halt.wait(max(0.0, self.interval_s - (self.clock() - sent)))

    def _await(self, sock: socket.socket, cseq: bytes, sent: float) -> bool:
        while True:
            remaining = self.timeout_s - (self.clock() - sent)
            if remaining <= 0:
                return False
            sock.settimeout(min(remaining, self.interval_s))
            try:
                reply = sock.recv(65535)
            except TimeoutError:
                return False
            except OSError:  # ICMP port unreachable while nobody owns the address
                time.sleep(0.0005)
                continue
            if cseq in reply:
                return True

    def stop(self) -> None:
        self._halt.set()
        self.join()


class PingerProcess:
    """This module as a child in a test-bed namespace; `stop()` returns its answers, wall clock."""

    def __init__(self, target: Address, namespace: str, log: Path, *, interval_ms: float = 1.0) -> None:
        self.argv = [sys.executable, "-m", "sipshadow.lab.pinger", target[0], str(target[1]),
                     "--interval-ms", f"{interval_ms:g}"]  # fmt: skip
        self.namespace = namespace
        self.log = log
        self.child = ChildProcess()

    def start(self) -> PingerProcess:
        """Start pinging now; the log starts empty so `stop()` reads only this run's answers."""
        self.child.start(self.argv, namespace=self.namespace, log=self.log, append=False)
        return self

    def stop(self, timeout_s: float = 10.0) -> list[dict[str, float]]:
        """SIGTERM: the pinger prints one `{"sent", "answered"}` line per answer, then exits."""
        self.child.stop(timeout_s)
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--interval-ms", type=float, default=1.0)
    parser.add_argument("--timeout-ms", type=float, default=50.0)
    args = parser.parse_args()
    pinger = Pinger((args.host, args.port), args.interval_ms / 1000, args.timeout_ms / 1000, clock=time.time)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pinger.start()
    stop.wait()
    pinger.stop()
    for sent, answered in pinger.samples:
        print(json.dumps({"sent": sent, "answered": answered}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
