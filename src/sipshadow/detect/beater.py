"""The beat sender: a small child process, so that only a dead or stalled node stops beating.

A thread in the node's own interpreter stops whenever the interpreter lock is held: one big
decode, a snapshot's encoding or a garbage collection pause silenced it for 61 ms once, and
the shadow took over a live primary. This child has its own interpreter and its own socket.
The node sends it, over a UNIX seqpacket pair, the session's send key whenever a session comes
up and the latest beat once per loop turn, with the stamp of the peer's last beat and when it
arrived; the child seals the beat (it is the only sender on that session key, so counters never
repeat) and sends it every interval, stamped as it leaves, with how long it held the peer's beat
(only the sender knows when it sends: the peer's round trip, `heartbeat.round_trip_s`).

What still stops the beat, on purpose:
- the node is dying: the kernel has flagged it exiting (`exiting`, checked before every beat),
  and once it is dead the pair's socket reaches end of file and the child exits;
- the node's loop has not turned for `stall_limit_s` (a wedged or frozen node; SIGSTOP): the
  child keeps quiet, the peer takes over; when beats resume after more than two intervals of
  silence, the child tells the node how long it was quiet (the node fences itself).
The limit is SIP's T1 (500 ms): a node that has not turned its loop for a retransmission
interval is failing its callers. A state transfer of 65 000 dialogs holds the loop about
150 ms (with the collector paused, `runtime.primary_link.collection_paused`; 300-430 ms
without), and beats from this process keep their 10 ms rhythm throughout, where a thread of
the node went silent 88-93 ms (benchmarks/heartbeat_stall.py).

Run as `python -m sipshadow.detect.beater FD HOST PORT BIND_HOST INTERVAL_S STALL_LIMIT_S`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

import msgspec

from sipshadow.core.actions import Address
from sipshadow.link.session import Session

log = logging.getLogger("sipshadow.detect")

#: A loop that has not turned for this long (s) is stalled: the beat stops.
STALL_LIMIT_S = 0.5

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class Beater:
    """The node's end: starts the child, feeds it sessions and beats, hears its stalls."""

    def __init__(self, peer: Address, bind_host: str, interval_s: float, stall_limit_s: float = STALL_LIMIT_S) -> None:
        self.peer = peer
        self._ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ours.setblocking(False)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sipshadow.detect.beater", str(theirs.fileno()), peer[0], str(peer[1]),
                 bind_host, repr(interval_s), repr(stall_limit_s)],
                pass_fds=[theirs.fileno()],
            )  # fmt: skip

    def fileno(self) -> int:
        return self._ours.fileno()

    def session(self, session: Session | None) -> None:
        """Seal with `session` from now on (None: stop beating until the next one)."""
        if session is None:
            self._send(["session"])
        else:
            self._send(["session", session.session_id, session.send_key])

    def beat(self, fields: tuple[str, int, str, int], echo: float = 0.0, received_at: float = 0.0) -> None:
        """The latest (node_id, epoch, role, released), and the `sent_at` of the peer's last beat
        with when it arrived (`time.monotonic()`; 0.0, 0.0: none yet): also says the loop turned."""
        self._send(["beat", *fields, echo, received_at])

    def now(self) -> None:
        """Send a beat at once (the node starts listening for its peer)."""
        self._send(["now"])

    def reports(self) -> list[tuple[str, float]]:
        """What the child said since the last call: ("ready", 0.0) once it can beat, and
        ("stalled", seconds) for each silence it kept."""
        said: list[tuple[str, float]] = []
        while True:
            try:
                data = self._ours.recv(256)
            except (BlockingIOError, InterruptedError):
                return said
            except OSError:  # the child is gone: its silence is what the peer hears
                return said
            if not data:
                return said
            what, seconds = _decoder.decode(data)
            said.append((str(what), float(seconds)))

    def _send(self, message: list[object]) -> None:
        with contextlib.suppress(OSError):  # a full or closed pair: the child is stuck or gone; silence follows
            self._ours.send(_encoder.encode(message))

    def close(self) -> None:
        self._ours.close()  # end of file: the child exits
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


#: `PF_EXITING` in /proc/PID/stat's flags (field 9): set as the kernel starts tearing a task down.
PF_EXITING = 0x4


def exiting(pid: int) -> bool:
    """Whether process `pid` is dying (or gone). A killed node closes its end of the control
    pair only after the kernel has unmapped its memory: 40-60 ms for a 600 MB process, during
    which beats would go on. The flag is set at the very start of the teardown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return True
    return len(fields) < 7 or bool(int(fields[6]) & PF_EXITING)


def run(control: socket.socket, peer: Address, bind_host: str, interval_s: float, stall_limit_s: float) -> None:
    """The child: beat every `interval_s` while the node's beats are fresh; exit when it dies."""
    from sipshadow.detect.heartbeat import CODEC, Heartbeat, stamped  # it imports this module

    sock = socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind_host, 0))
    parent = os.getppid()
    control.send(_encoder.encode(["ready", 0.0]))
    session: Session | None = None
    fields: tuple[str, int, str, int] | None = None
    echo = received_at = 0.0  # the peer's last beat: its stamp, and when the node got it
    ticked = last_sent = time.monotonic()
    next_at = ticked + interval_s

    def send(now: float) -> None:
        nonlocal last_sent
        if session is None or fields is None or now - ticked >= stall_limit_s or exiting(parent):
            if session is None:
                last_sent = now  # offering is not silence
            return
        if now - last_sent > 2 * interval_s:
            with contextlib.suppress(OSError):
                control.send(_encoder.encode(["stalled", now - last_sent]))
        last_sent = now
        with contextlib.suppress(OSError):  # no route while a link is down: silence says the same
            sock.sendto(session.seal(CODEC.encode(stamped(Heartbeat(*fields, echo=echo), received_at))), peer)

    while True:
        readable, _, _ = select.select([control], [], [], max(0.0, next_at - time.monotonic()))
        if readable:
            try:
                data = control.recv(4096)
            except OSError:  # reset: the node is gone
                return
            if not data:
                return  # the node is gone
            message = _decoder.decode(data)
            if message[0] == "beat":
                fields, ticked = (message[1], message[2], message[3], message[4]), time.monotonic()
                echo, received_at = float(message[5]), float(message[6])
            elif message[0] == "session":
                session = Session(message[1], "", b"", message[2], message[2]) if len(message) == 3 else None
            elif message[0] == "now":
                send(time.monotonic())
            continue
        now = time.monotonic()
        next_at = now + interval_s
        send(now)


def main(argv: list[str]) -> None:
    fd, host, port, bind_host, interval_s, stall_limit_s = argv
    # The node decides when to stop (a SIGTERM to its process group must not silence the
    # beats of a primary that hands over first); the child ends when the node's pair closes.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=int(fd))
    with contextlib.suppress(KeyboardInterrupt):
        run(control, (host, int(port)), bind_host, float(interval_s), float(stall_limit_s))


if __name__ == "__main__":
    main(sys.argv[1:])
