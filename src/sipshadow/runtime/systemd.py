"""systemd's notification protocol (sd_notify(3)), spoken directly: a unit of `Type=notify`
learns that the node is ready, reloading or stopping, and its watchdog hears from the event loop.

The protocol is small and documented: `$NOTIFY_SOCKET` names an AF_UNIX datagram socket, a file
system path (`/run/systemd/notify`) or an abstract name (`@…`, a leading NUL on the wire), and
each datagram is newline-separated `KEY=VALUE` assignments. systemd takes the sender's pid from
the kernel's credentials, so with `NotifyAccess=main` only the node's own process is heard.

The environment is left as it is (sd_notify's `unset_environment` is not done): the node spawns
one child, the heartbeat sender (`sipshadow.detect.beater`), which inherits `NOTIFY_SOCKET` and
`WATCHDOG_*` but never builds a `Notifier`, so it never speaks for the unit; and `WATCHDOG_PID`,
when systemd sets it, names the node, so a child that did would find no watchdog to feed.
The notification socket itself is close-on-exec (Python's default), so the child holds no copy.

Notifications are best effort: a send that fails is logged once, never raised, because a node
that cannot reach systemd still has calls to carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("sipshadow.systemd")

#: How long one notification may block the loop when systemd's queue is full (s). PID 1 drains
#: its socket promptly; a state change waits this long at most, then is dropped and logged.
SEND_TIMEOUT_S = 0.2


class Notifier:
    """Talks to systemd when started by it (`NOTIFY_SOCKET` set); every method is a no-op otherwise."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> None:
        """`address`: the socket address as `socket.sendto` takes it (abstract names with a leading
        NUL), None for a disabled notifier; `watchdog_*` as systemd passes them, parsed."""
        self.address = address
        self.enabled = address is not None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._socket: socket.socket | None = None
        self._failed = False
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for, or a disabled one (unset, or an address we cannot use)."""
        address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        return cls(address, _positive_int(environ.get("WATCHDOG_USEC")), _positive_int(environ.get("WATCHDOG_PID")))

    def ready(self, status: str = "") -> None:
        """Start-up is done: systemd starts the units ordered after this one."""
        self._send(("READY", "1"), ("STATUS", status), ("MAINPID", str(os.getpid())))

    def reloading(self) -> None:
        """A reload begins. MONOTONIC_USEC lets systemd >= 253 tell this reload from an older
        one (it requires it with `Type=notify-reload`); earlier versions ignore the key."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(("RELOADING", "1"), ("MONOTONIC_USEC", str(now_usec)))

    def reloaded(self, status: str = "") -> None:
        """The reload is done (READY=1 again ends systemd's `reloading` state)."""
        self._send(("READY", "1"), ("STATUS", status))

    def stopping(self, status: str = "") -> None:
        """Shutdown begins (a handover may take a while; systemd shows `deactivating`)."""
        self._send(("STOPPING", "1"), ("STATUS", status))

    def status(self, text: str) -> None:
        """A one-line state for `systemctl status`."""
        self._send(("STATUS", text))

    def watchdog_interval_s(self) -> float | None:
        """How often to ping (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or None
        when there is no watchdog or it watches another process (WATCHDOG_PID is not ours)."""
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def start_watchdog(self, loop_alive: Callable[[], bool] | None = None) -> asyncio.Task[None] | None:
        """Ping WATCHDOG=1 from the running loop every interval, first at once; None without a
        watchdog. The pings ride the loop on purpose: a loop stalled past WatchdogSec stops them
        and systemd kills the node. `loop_alive`, when given, must also hold for a ping to go."""
        interval_s = self.watchdog_interval_s()
        if interval_s is None:
            return None
        if self._watchdog is not None and not self._watchdog.done():
            return self._watchdog
        self._watchdog = asyncio.get_running_loop().create_task(self._ping(interval_s, loop_alive))
        return self._watchdog

    def close(self) -> None:
        """Stop the watchdog pings and close the socket; later notifications are no-ops."""
        if self._watchdog is not None:
            with contextlib.suppress(RuntimeError):  # its loop is already closed: nothing runs it
                self._watchdog.cancel()
            self._watchdog = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.enabled = False

    async def _ping(self, interval_s: float, loop_alive: Callable[[], bool] | None) -> None:
        complained = False
        while True:
            try:
                alive = loop_alive is None or loop_alive()
            except Exception:  # a broken health check withholds the ping (systemd acts) but is said once
                alive = False
                if not complained:
                    complained = True
                    log.exception("the watchdog's health check failed; withholding WATCHDOG=1")
            if alive:
                self._send(("WATCHDOG", "1"))
            await asyncio.sleep(interval_s)

    def _send(self, *assignments: tuple[str, str]) -> None:
        """One datagram of `KEY=VALUE` lines; empty values are left out (an empty STATUS= would
        clear the status shown), newlines in values are flattened so no value adds a key."""
        if not self.enabled or self.address is None:
            return
        lines = [f"{key}={_one_line(value)}" for key, value in assignments if value]
        if not lines:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(SEND_TIMEOUT_S)
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                shown = "@" + self.address[1:] if self.address.startswith("\0") else self.address
                log.warning("cannot notify systemd at %s: %s (further failures are not logged)", shown, error)


def _socket_address(value: str) -> str | None:
    """NOTIFY_SOCKET as `sendto` takes it: an absolute path, or `@name` for the abstract name
    (leading NUL). Anything else (unset, relative, `vsock:` of VMs) disables notifications."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value:
        log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX address; not notifying systemd", value)
    return None


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value else 0
    except ValueError:
        return None
    return number if number > 0 else None


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ").replace("\0", " ")
