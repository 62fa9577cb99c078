"""sd_notify spoken to a real AF_UNIX datagram socket, as systemd's would receive it: the exact
datagrams, the abstract namespace, the watchdog's rhythm and its silence when the loop stalls."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipshadow.runtime.systemd import Notifier


class NotifySocket:
    """systemd's end: a bound datagram socket and a thread stamping each datagram as it arrives
    (a thread, so the stamps stay true while the test's event loop is stalled on purpose)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.arrivals: queue.Queue[tuple[float, str]] = queue.Queue()
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.arrivals.put((time.monotonic(), data.decode()))

    def next(self, timeout: float = 2.0) -> str:
        return self.arrivals.get(timeout=timeout)[1]

    def drain(self) -> list[tuple[float, str]]:
        """Everything received so far (after a short wait for datagrams still in flight)."""
        time.sleep(0.05)
        received = []
        while not self.arrivals.empty():
            received.append(self.arrivals.get_nowait())
        return received

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.sock.close()


@pytest.fixture
def path_socket() -> Iterator[tuple[NotifySocket, dict[str, str]]]:
    """A socket on a file system path (a short one: sun_path holds 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sd-") as directory:
        path = str(Path(directory) / "notify")
        receiver = NotifySocket(path)
        try:
            yield receiver, {"NOTIFY_SOCKET": path}
        finally:
            receiver.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[NotifySocket, dict[str, str]]]:
    """A socket in the abstract namespace: `@name` in NOTIFY_SOCKET, a leading NUL on the wire."""
    name = f"sipshadow-test-{uuid.uuid4().hex}"
    receiver = NotifySocket("\0" + name)
    try:
        yield receiver, {"NOTIFY_SOCKET": "@" + name}
    finally:
        receiver.close()


def test_ready_status_stopping_are_the_documented_datagrams(path_socket: tuple[NotifySocket, dict[str, str]]) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment(environ)
    assert notifier.enabled
    notifier.ready("serving 0 calls")
    assert receiver.next() == f"READY=1\nSTATUS=serving 0 calls\nMAINPID={os.getpid()}"
    notifier.ready()
    assert receiver.next() == f"READY=1\nMAINPID={os.getpid()}"
    notifier.status("primary, 12 calls")
    assert receiver.next() == "STATUS=primary, 12 calls"
    notifier.stopping("handing over")
    assert receiver.next() == "STOPPING=1\nSTATUS=handing over"
    notifier.stopping()
    assert receiver.next() == "STOPPING=1"
    notifier.close()


def test_a_reload_is_reloading_with_the_monotonic_clock_then_ready(
    path_socket: tuple[NotifySocket, dict[str, str]],
) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment(environ)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.next().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    notifier.reloaded("reloaded config")
    assert receiver.next() == "READY=1\nSTATUS=reloaded config"
    notifier.close()


def test_the_abstract_namespace(abstract_socket: tuple[NotifySocket, dict[str, str]]) -> None:
    receiver, environ = abstract_socket
    notifier = Notifier.from_environment(environ)
    notifier.ready("up")
    assert receiver.next() == f"READY=1\nSTATUS=up\nMAINPID={os.getpid()}"
    notifier.close()


def test_a_newline_in_a_status_cannot_add_a_key(path_socket: tuple[NotifySocket, dict[str, str]]) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment(environ)
    notifier.status("peer said: bye\nSTOPPING=1\r\n")
    assert receiver.next() == "STATUS=peer said: bye STOPPING=1  "
    notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"NOTIFY_SOCKET": "@"},
                    {"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "200000"}):  # fmt: skip
        notifier = Notifier.from_environment(environ)
        assert not notifier.enabled
        notifier.ready("x")
        notifier.reloading()
        notifier.reloaded()
        notifier.stopping()
        notifier.status("y")
        assert notifier.watchdog_interval_s() is None

        async def start(notifier: Notifier = notifier) -> asyncio.Task[None] | None:
            return notifier.start_watchdog()

        assert asyncio.run(start()) is None
        notifier.close()


def test_the_environment_is_left_alone(path_socket: tuple[NotifySocket, dict[str, str]]) -> None:
    receiver, environ = path_socket
    environ = {**environ, "WATCHDOG_USEC": "200000"}
    before = dict(environ)
    Notifier.from_environment(environ).ready()
    assert environ == before
    assert receiver.next().startswith("READY=1")


def test_a_send_that_fails_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="sd-") as directory:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(Path(directory) / "nobody-listens")})
        with caplog.at_level(logging.WARNING, logger="sipshadow.systemd"):
            notifier.ready("up")
            notifier.status("still up")
            notifier.stopping()
        warnings = [record for record in caplog.records if record.name == "sipshadow.systemd"]
        assert len(warnings) == 1 and "nobody-listens" in warnings[0].getMessage()
        notifier.close()


@pytest.mark.parametrize(
    ("watchdog", "interval_s"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only(
    watchdog: dict[str, str], interval_s: float | None
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "/run/systemd/notify", **watchdog})
    assert notifier.watchdog_interval_s() == interval_s


def run_loop_for(notifier: Notifier, seconds: float, stall_at: float | None = None, stall_s: float = 0.0) -> bool:
    """Turn a loop for `seconds` with the watchdog running; optionally block it (time.sleep in a
    callback: a wedged loop) `stall_at` seconds in. Returns whether a watchdog task started."""

    async def main() -> bool:
        task = notifier.start_watchdog()
        loop = asyncio.get_running_loop()
        if stall_at is not None:
            loop.call_later(stall_at, time.sleep, stall_s)
        await asyncio.sleep(seconds)
        notifier.close()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()
        return task is not None

    return asyncio.run(main())


def gaps(arrivals: list[tuple[float, str]]) -> list[float]:
    return [later[0] - earlier[0] for earlier, later in itertools.pairwise(arrivals)]


def test_the_watchdog_pings_every_half_watchdog_usec(path_socket: tuple[NotifySocket, dict[str, str]]) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment({**environ, "WATCHDOG_USEC": "200000"})
    assert run_loop_for(notifier, 0.65)
    arrivals = receiver.drain()
    assert {text for _, text in arrivals} == {"WATCHDOG=1"}
    assert 5 <= len(arrivals) <= 8, arrivals  # at once, then every 0.1 s for 0.65 s
    assert all(0.07 <= gap <= 0.2 for gap in gaps(arrivals)), gaps(arrivals)
    notifier.ready()  # closed: nothing more is sent
    assert receiver.drain() == []


def test_no_watchdog_pings_when_watchdog_pid_names_another_process(
    path_socket: tuple[NotifySocket, dict[str, str]],
) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment({**environ, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert not run_loop_for(notifier, 0.3)
    assert receiver.drain() == []


def test_a_stalled_loop_stops_the_pings_until_it_turns_again(path_socket: tuple[NotifySocket, dict[str, str]]) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment({**environ, "WATCHDOG_USEC": "200000"})
    run_loop_for(notifier, 1.0, stall_at=0.25, stall_s=0.45)
    arrivals = receiver.drain()
    spaced = gaps(arrivals)
    assert max(spaced) >= 0.43, spaced  # silence while the loop was held
    assert sorted(spaced)[-2] <= 0.2, spaced  # and the usual rhythm before and after
    stall_ends = arrivals[spaced.index(max(spaced)) + 1][0]
    assert any(when > stall_ends for when, _ in arrivals)  # pings resumed once the loop turned


def test_loop_alive_withholds_pings_while_it_says_no(path_socket: tuple[NotifySocket, dict[str, str]]) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment({**environ, "WATCHDOG_USEC": "200000"})
    healthy = False

    async def main() -> None:
        nonlocal healthy
        notifier.start_watchdog(lambda: healthy)
        await asyncio.sleep(0.35)
        assert receiver.drain() == []
        healthy = True
        await asyncio.sleep(0.35)
        notifier.close()

    asyncio.run(main())
    assert 2 <= len(receiver.drain()) <= 5


def test_a_health_check_that_raises_withholds_the_pings_and_is_logged_once(
    path_socket: tuple[NotifySocket, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, environ = path_socket
    notifier = Notifier.from_environment({**environ, "WATCHDOG_USEC": "200000"})

    def broken() -> bool:
        raise RuntimeError("no status")

    async def main() -> None:
        task = notifier.start_watchdog(broken)
        await asyncio.sleep(0.35)
        assert task is not None and not task.done()
        notifier.close()

    with caplog.at_level(logging.ERROR, logger="sipshadow.systemd"):
        asyncio.run(main())
    assert receiver.drain() == []
    assert [record.getMessage() for record in caplog.records if record.name == "sipshadow.systemd"] == [
        "the watchdog's health check failed; withholding WATCHDOG=1"
    ]
