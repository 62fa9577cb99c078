"""The keepalived FIFO reader: every state change reaches the node, in order, through a real FIFO."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from sipshadow.runtime.keepalived_fifo import VrrpChange, follow_fifo, order_for, parse_change


def test_lines_parse_as_keepalived_writes_them_and_garbage_is_nothing() -> None:
    assert parse_change('INSTANCE "sipshadow" MASTER 150\n') == VrrpChange("INSTANCE", "sipshadow", "MASTER", 150)
    assert parse_change('GROUP "g" BACKUP 0') == VrrpChange("GROUP", "g", "BACKUP", 0)
    for garbage in ("", "INSTANCE sipshadow MASTER", 'VS [1.2.3.4]:tcp:80 UP', 'INSTANCE "x" MASTER high'):
        assert parse_change(garbage) is None


ORDERED = [("MASTER", "takeover"), ("BACKUP", "standby"), ("FAULT", "standby"),
           ("STOP", None), ("DELETED", None), ("MASTER_RX_LOWER_PRI", None)]  # fmt: skip


@pytest.mark.parametrize(("state", "order"), ORDERED)
def test_states_order_what_the_hooks_ordered(state: str, order: str | None) -> None:
    assert order_for(VrrpChange("INSTANCE", "sipshadow", state, 150), "sipshadow") == order
    assert order_for(VrrpChange("INSTANCE", "other", state, 150), "sipshadow") is None
    assert order_for(VrrpChange("GROUP", "sipshadow", state, 150), "sipshadow") is None


def write_later(fifo: Path, chunks: list[tuple[float, bytes]]) -> threading.Thread:
    """Write `chunks` (delay, bytes) to `fifo` once the reader has made it."""

    def run() -> None:
        deadline = time.monotonic() + 5
        while not fifo.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        fd = os.open(fifo, os.O_WRONLY)
        try:
            for delay, chunk in chunks:
                time.sleep(delay)
                os.write(fd, chunk)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_changes_reach_the_node_in_the_order_keepalived_wrote_them(tmp_path: Path) -> None:
    fifo, sent, log = tmp_path / "vrrp.fifo", [], io.StringIO()
    # start-up: BACKUP then MASTER 36 ms later; the hooks could deliver these reversed
    writer = write_later(fifo, [(0, b'INSTANCE "sipshadow" BACKUP 150\nINSTANCE "sips'),
                                (0.03, b'hadow" MASTER 150\nINSTANCE "other" FAULT 100\n')])  # fmt: skip
    assert follow_fifo(fifo, "sipshadow", lambda order, reason: sent.append((order, reason)) or "ok", log,
                       stop_after_s=0.5) == 0  # fmt: skip
    writer.join(1)
    assert sent == [("standby", "keepalived-BACKUP"), ("takeover", "keepalived-MASTER")]
    assert 'INSTANCE "other" FAULT 100 -> nothing' in log.getvalue()


def test_an_unreachable_node_gets_the_latest_order_once_it_answers(tmp_path: Path) -> None:
    fifo, sent, log = tmp_path / "vrrp.fifo", [], io.StringIO()
    reachable_at = time.monotonic() + 0.5

    def send(order: str, reason: str) -> str:
        if time.monotonic() < reachable_at:
            raise ConnectionRefusedError("no socket yet")
        sent.append(order)
        return "ok"

    writer = write_later(fifo, [(0, b'INSTANCE "sipshadow" MASTER 150\n'), (0.1, b'INSTANCE "sipshadow" BACKUP 150\n')])
    follow_fifo(fifo, "sipshadow", send, log, stop_after_s=1.2)
    writer.join(1)
    assert sent == ["standby"], "the stale takeover must not be delivered after the newer standby"
    assert log.getvalue().count("node unreachable") == 2  # once per order, not once per retry


def test_a_path_that_is_not_a_fifo_is_refused_in_one_line(tmp_path: Path) -> None:
    path, log = tmp_path / "file", io.StringIO()
    path.write_text("")
    assert follow_fifo(path, "sipshadow", lambda order, reason: "ok", log, stop_after_s=0.1) == 2
    assert "is not a FIFO" in log.getvalue() and log.getvalue().count("\n") == 1
