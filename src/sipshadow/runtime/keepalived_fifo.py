"""`sipshadow ctl keepalived-fifo`: keepalived's state changes, in order, to the node.

keepalived forks each `notify_master` / `notify_backup` command and does not wait for it, so two
changes close together race: at start-up keepalived enters BACKUP and, 36 ms later, MASTER, and
the `standby` of the first can reach the node after the `takeover` of the second, which leaves
the elected node a shadow (seen in CI). keepalived's `vrrp_notify_fifo` writes the same changes
as lines to a FIFO, in the order they happen, and `vrrp_notify_fifo_script` starts one reader for
it; this is that reader. It is also faster than a hook: no Python starts per change.

Lines (keepalived.conf(5), `notify`): `INSTANCE "NAME" STATE PRIORITY`, STATE one of MASTER,
BACKUP, FAULT, STOP, DELETED, MASTER_RX_LOWER_PRI (and `GROUP ...` for sync groups). MASTER
orders `takeover`, BACKUP and FAULT order `standby`, the same mapping as the hooks; the others
change nothing. An order the node cannot take (its socket is not there yet, it is restarting)
is retried every 0.2 s until it lands or a newer change replaces it: the node gets the latest
state, never a stale one. keepalived sends SIGTERM when it exits; the reader then reads what is
already written for 0.5 s and stops.
"""

from __future__ import annotations

import os
import selectors
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TextIO

__all__ = ["ORDERS", "VrrpChange", "follow_fifo", "order_for", "parse_change"]

#: keepalived state -> the ctl command it orders (the hooks' mapping, docs/keepalived.md).
ORDERS = {"MASTER": "takeover", "BACKUP": "standby", "FAULT": "standby"}
RETRY_S = 0.2
#: How long the reader keeps reading after SIGTERM (keepalived writes its last changes after it).
DRAIN_S = 0.5


class VrrpChange(NamedTuple):
    """One FIFO line: kind (INSTANCE or GROUP), the instance's name, its new state, its priority."""

    kind: str
    name: str
    state: str
    priority: int


def parse_change(line: str) -> VrrpChange | None:
    """`INSTANCE "VI_1" MASTER 150` -> VrrpChange; None for anything else (blank, garbled)."""
    parts = line.split()
    if len(parts) != 4 or parts[0] not in ("INSTANCE", "GROUP"):
        return None
    kind, name, state, priority = parts
    if not priority.isdigit():
        return None
    return VrrpChange(kind, name.strip('"'), state, int(priority))


def order_for(change: VrrpChange, instance: str) -> str | None:
    """The ctl command `change` orders for our `instance`, or None."""
    if change.kind != "INSTANCE" or change.name != instance:
        return None
    return ORDERS.get(change.state)


Send = Callable[[str, str], str]
"""(command, reason) -> the node's answer as one line; raises OSError when the node is unreachable."""


def follow_fifo(fifo: Path, instance: str, send: Send, log: TextIO, *, stop_after_s: float | None = None) -> int:
    """Read keepalived's FIFO and order the node in the same order; returns 0 on SIGTERM.

    Creates the FIFO if it is missing. `send` delivers one order; `log` gets one line per change
    and per answer. `stop_after_s` bounds the run (tests); keepalived's SIGTERM ends it otherwise.
    """
    deadline = [time.monotonic() + stop_after_s if stop_after_s is not None else float("inf")]
    wake_read, wake_write = os.pipe()  # the handler wakes the select, which would otherwise resume its wait

    def on_term(signum: int, frame: Any) -> None:
        deadline[0] = min(deadline[0], time.monotonic() + DRAIN_S)
        os.write(wake_write, b"!")

    previous = signal.signal(signal.SIGTERM, on_term)  # before the FIFO exists: keepalived may signal at once
    if not fifo.exists():
        os.mkfifo(fifo, 0o600)
    elif not stat.S_ISFIFO(fifo.stat().st_mode):
        signal.signal(signal.SIGTERM, previous)
        os.close(wake_read)
        os.close(wake_write)
        _log(log, f"{fifo} exists and is not a FIFO")
        return 2
    # read and write: our own writer end means no EOF when keepalived closes or restarts its end
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    pending: tuple[str, str] | None = None
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        selector.register(wake_read, selectors.EVENT_READ)
        try:
            while (left := deadline[0] - time.monotonic()) > 0:
                ready = [key.fd for key, _ in selector.select(min(left, RETRY_S) if pending else min(left, 3600.0))]
                if wake_read in ready:
                    os.read(wake_read, 64)
                if fd in ready:
                    buffer += os.read(fd, 1 << 16)
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").strip()
                    change = parse_change(line)
                    order = order_for(change, instance) if change else None
                    _log(log, f"{line} -> {order or 'nothing'}")
                    if change and order:
                        pending = _deliver(send, order, f"keepalived-{change.state}", log)
                if pending and fd not in ready:
                    pending = _deliver(send, *pending, log, quiet=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
            for each in (fd, wake_read, wake_write):
                os.close(each)
    return 0


def _deliver(send: Send, order: str, reason: str, log: TextIO, quiet: bool = False) -> tuple[str, str] | None:
    """Send one order; the order back when the node could not be reached (to retry), else None.
    `quiet`: a retry, whose failure the first attempt has logged already."""
    try:
        _log(log, f"{order}: {send(order, reason)}")
        return None
    except OSError as error:
        if not quiet:
            _log(log, f"{order}: node unreachable ({error}); retrying every {RETRY_S:g} s")
        return order, reason


def _log(log: TextIO, text: str) -> None:
    print(f"{time.time():.6f} {text}", file=log, flush=True)


def main(fifo: Path, instance: str, send: Send) -> int:
    """The CLI's entry: log to stdout (keepalived discards it unless redirected)."""
    return follow_fifo(fifo, instance, send, sys.stdout)
