"""The lab's child-process shell and the Kamailio config template (real short-lived children, no network)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from sipshadow.lab.kamailio import config_template, render_config
from sipshadow.lab.process import ChildExited, ChildProcess, in_namespace

#: A parent that forks a worker into its own group and ignores SIGTERM's default for its worker.
FORKING = """
import os, signal, sys, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker that outlives its parent's SIGTERM
    time.sleep(60)
    sys.exit(0)
print("ready", flush=True)
time.sleep(60)
"""


def test_namespace_prefix() -> None:
    assert in_namespace(["sipp", "-v"], None) == ["sipp", "-v"]
    assert in_namespace(["sipp", "-v"], "ss1-client") == ["ip", "netns", "exec", "ss1-client", "sipp", "-v"]


def test_start_ready_stop_sweeps_the_whole_group(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = ChildProcess()
    child.start([sys.executable, "-c", FORKING], log=log, echo=True)
    child.wait_ready(lambda: "ready" in log.read_text(), timeout_s=10)
    assert log.read_text().startswith(f"$ {sys.executable} -c")
    deadline = time.monotonic() + 5
    while len(child.group_pids()) < 2:  # the worker shares the child's group
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert child.cpu_seconds() >= 0.0 and child.running()
    assert child.stop(term_timeout_s=2.0) == -signal.SIGTERM
    assert child.group_pids() == []  # the worker that ignored SIGTERM got the SIGKILL sweep
    assert child.stop() == -signal.SIGTERM  # idempotent


def test_a_child_that_dies_before_it_is_ready(tmp_path: Path) -> None:
    child = ChildProcess()
    child.start([sys.executable, "-c", "raise SystemExit(7)"], log=tmp_path / "child.log")
    with pytest.raises(ChildExited, match="exited with 7") as caught:
        child.wait_ready(lambda: False, timeout_s=10)
    assert caught.value.returncode == 7 and not child.running()


def test_not_ready_in_time_leaves_the_child_to_its_driver(tmp_path: Path) -> None:
    child = ChildProcess()
    child.start([sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "child.log", append=False)
    try:
        with pytest.raises(TimeoutError):
            child.wait_ready(lambda: False, timeout_s=0.1)
        assert child.running()
        assert child.wait(0.05) is None
        assert child.kill(timeout_s=5) == -signal.SIGKILL
    finally:
        child.stop()


def test_kamailio_template_ships_with_the_package_and_fills_both_routings() -> None:
    assert "${routing_symbol}" in config_template().template
    variants = (("callid-hash", "ROUTING_CALLID_HASH", '"0"'), ("dialog", "ROUTING_DIALOG", '"4"'))
    for routing, symbol, initial in variants:
        config = render_config(("127.0.0.1", 5060), [("127.0.0.1", 5070)], 3, list_file="/w/d.list", routing=routing)
        assert config.startswith("#!KAMAILIO\n") and f"#!define {symbol}\n" in config
        assert "${" not in config and "listen=udp:127.0.0.1:5060\nchildren=3\nmaxbuffer=8388608\n" in config
        assert f'ds_select_dst("1", {initial})' in config
        assert 'modparam("dispatcher", "list_file", "/w/d.list")' in config
        assert "$du = $dlg_var(member);" in config and "$rU == $null" in config  # Kamailio's own `$` untouched
