"""The paper's experiment on the namespace test bed: SIPp with -nr, the primary fails 3 s in.

Calls of 10 s at 50 cps; two SIPp UAS members; the shadow gets its input from the switch's
port mirror, stays silent under nftables, and takes the VIP by gratuitous ARP.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipshadow.lab.bed.testbed import SERVICE_IF
from sipshadow.lab.netns_lab import NetnsLab

pytestmark = pytest.mark.sipp

CALL_MS, RATE, CALLS, FAIL_AT_S = 10_000, 50, 400, 3.0


@pytest.fixture
def lab_factory(netns_ok: None, tmp_path: Path) -> Iterator:
    labs: list[NetnsLab] = []

    def make(mode: str) -> NetnsLab:
        lab = NetnsLab(tmp_path / mode, mode=mode)
        labs.append(lab)
        return lab.up()

    yield make
    for lab in labs:
        lab.down()


def calls_with_a_crash(lab: NetnsLab, how: str = "crash"):
    uac = lab.client_uac(CALLS, RATE, call_ms=CALL_MS, recv_timeout=3.0, timeout=60)
    uac.start()
    time.sleep(FAIL_AT_S)
    lab.fail(how)
    return uac


def test_active_replication_loses_no_call_when_the_primary_crashes(lab_factory) -> None:
    lab = lab_factory("active")
    uac = calls_with_a_crash(lab)
    takeover = lab.wait_for_takeover()
    result = uac.wait()
    assert result.successful_calls == CALLS and result.failed_calls == 0, result.summary()
    assert takeover.dialogs >= FAIL_AT_S * RATE * 0.8, takeover


def test_network_level_ha_loses_the_calls_that_were_up(lab_factory) -> None:
    lab = lab_factory("network")
    uac = calls_with_a_crash(lab)
    lab.wait_for_takeover()
    result = uac.wait()
    up_at_crash = FAIL_AT_S * RATE
    assert abs(result.failed_calls - up_at_crash) <= 0.1 * up_at_crash, result.summary()
    assert result.successful_calls == CALLS - result.failed_calls


def test_without_ha_every_call_after_the_crash_fails(lab_factory) -> None:
    lab = lab_factory("none")
    result = calls_with_a_crash(lab).wait()
    assert result.successful_calls == 0 and result.failed_calls == CALLS, result.summary()  # all were up


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_capture_shows_a_silent_shadow_then_the_client_talking_only_to_it(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory("active")
    shadow_mac = lab.testbed.mac_of("shadow")
    capture = tmp_path / "client.pcap"
    tcpdump = subprocess.Popen(
        lab.testbed.exec_argv("client", ["tcpdump", "-i", SERVICE_IF, "-n", "-U", "-w", str(capture), "udp port 5060"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        uac = lab.client_uac(200, RATE, call_ms=2000, recv_timeout=3.0, timeout=60)
        uac.start()
        time.sleep(2.0)
        killed_at = time.time()
        lab.fail("kill")  # the old host keeps the VIP until its lease lapses (3 s): the ARP move redirects the client
        lab.wait_for_takeover()
        settled_at = time.time() + 0.3
        result = uac.wait()
    finally:
        tcpdump.terminate()
        tcpdump.wait(5)
    assert result.failed_calls == 0, result.summary()
    frames = [line.split() for line in subprocess.run(
        ["tcpdump", "-r", str(capture), "-n", "-e", "-tt"], capture_output=True, text=True, check=True
    ).stdout.splitlines()]  # fmt: skip
    # fields: time, src MAC, ">", dst MAC, ...
    from_shadow_while_silent = [f for f in frames if float(f[0]) < killed_at and f[1] == shadow_mac]
    assert not from_shadow_while_silent, from_shadow_while_silent[:3]
    client_mac = lab.testbed.mac_of("client")
    client_after = [f for f in frames if float(f[0]) > settled_at and f[1] == client_mac]
    assert client_after and all(f[3].rstrip(",") == shadow_mac for f in client_after)
    assert any(float(f[0]) > killed_at and f[1] == shadow_mac for f in frames)


def test_a_heartbeat_partition_leaves_one_owner_of_the_vip(lab_factory) -> None:
    lab = lab_factory("active")
    lab.fail("partition")
    time.sleep(1.0)
    assert lab.role_of("shadow") == "shadow" and lab.role_of("primary") == "primary"
    shadow_addresses = lab.run_in("shadow", "ip", "-4", "-o", "addr", "show", "dev", SERVICE_IF)
    assert lab.topology.vip not in shadow_addresses
    assert lab.nodes["shadow"].status().ha.held_by_arbiter >= 1
    result = lab.client_uac(50, RATE, recv_timeout=3.0, timeout=30).start().wait()
    assert result.successful_calls == 50, result.summary()
