"""TCP connections survive the primary's crash (issue 12): the shadow rebuilds them by TCP repair.

SIPp over TCP in the client namespace (a connection per call, or one for all), SIPp members
over UDP or TCP; the primary's links go down 2.5 s in; SIPp may not reconnect, so a connection
reset or closed fails its calls. A capture on the client's link shows what the client saw: no
reset, and no connection opened twice.
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

pytestmark = [pytest.mark.sipp, pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is missing")]

CALLS, RATE, CALL_MS, FAIL_AT_S = 150, 50, 3000, 2.5


@pytest.fixture
def labs(netns_ok: None, tmp_path: Path) -> Iterator[list[NetnsLab]]:
    made: list[NetnsLab] = []
    yield made
    for lab in made:
        lab.down()


def capture_argv(lab: NetnsLab, path: Path) -> list[str]:
    return lab.testbed.exec_argv("client", ["tcpdump", "-i", SERVICE_IF, "-n", "-U", "-w", str(path), "tcp port 5060"])


def flagged(capture: Path, flags: str) -> list[str]:
    """The captured segments with any of `flags` (tcpdump's names: tcp-syn, tcp-rst)."""
    text = subprocess.run(
        ["tcpdump", "-r", str(capture), "-n", f"tcp[tcpflags] & ({flags}) != 0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return text.splitlines()


@pytest.mark.parametrize(("sipp_transport", "member_transport"), [("tn", "udp"), ("t1", "tcp")])
def test_tcp_calls_and_their_connections_survive_a_crash(
    labs: list[NetnsLab], tmp_path: Path, sipp_transport: str, member_transport: str
) -> None:
    lab = NetnsLab(tmp_path / "bed", mode="active", member_transport=member_transport)
    labs.append(lab.up())
    capture = tmp_path / "client.pcap"
    tcpdump = subprocess.Popen(capture_argv(lab, capture), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        uac = lab.client_uac(CALLS, RATE, call_ms=CALL_MS, recv_timeout=3.0, timeout=60, transport=sipp_transport)
        uac.start()
        time.sleep(FAIL_AT_S)
        lab.fail("crash")
        takeover = lab.wait_for_takeover()
        result = uac.wait()
        time.sleep(0.3)
    finally:
        tcpdump.terminate()
        tcpdump.wait(5)
    assert result.successful_calls == CALLS and result.failed_calls == 0, result.summary()
    status = lab.nodes["shadow"].status()
    assert status.tcp is not None and status.tcp["repaired"] >= (1 if sipp_transport == "t1" else 0.7 * RATE * 2)
    assert status.tcp["repair_failures"] == 0, status.tcp
    if member_transport == "tcp":  # the members' connections were rebuilt too: no new ones were opened
        assert status.tcp["connected"] == 0, status.tcp
    assert flagged(capture, "tcp-rst") == []
    opened = flagged(capture, "tcp-syn")
    client_ports = {line.split()[2] for line in opened if f"> {lab.topology.vip}.5060" in line}
    # every connection the client opened, once (a SYN lost in the crash comes again, same port):
    # one per call, or one for all of them
    assert len(client_ports) == (CALLS if sipp_transport == "tn" else 1), sorted(client_ports)[:5]
    assert takeover.dialogs >= RATE * 2
