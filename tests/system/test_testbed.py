"""The namespace test bed, tap, silent mode, takeover and faults, proven with real sockets (root only)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from sipshadow.lab.bed import faults, mirror
from sipshadow.lab.bed.testbed import SWITCH, Testbed, Topology, down_all, list_namespaces
from sipshadow.net import silent
from sipshadow.net.accept import ACCEPT_TABLE
from sipshadow.net.vip import garp_frames, garp_offsets

AGENT = Path(__file__).with_name("agent.py")
SETTLE_S = 0.2  # time for stray duplicates to show up before a receiver is stopped
REP_PORT = 7000


def agent_argv(tb: Testbed, host: str, *args: str) -> list[str]:
    return tb.exec_argv(host, [sys.executable, str(AGENT), *args])


def agent(tb: Testbed, host: str, *args: str) -> dict:
    """Run the agent to completion in host; return its JSON result."""
    proc = subprocess.run(agent_argv(tb, host, *args), capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def send(tb: Testbed, host: str, dst: str, payload: str, *, src: str = "", sport: int = 0, dport: int = 5060) -> dict:
    return agent(
        tb, host, "send", "--dst", dst, "--dport", str(dport), "--payload", payload, "--src", src, "--sport", str(sport)
    )


class Receiver:
    """A UDP socket listening inside a host's namespace; stop() returns the payloads it got, in order."""

    def __init__(self, tb: Testbed, host: str, *, bind: str = "0.0.0.0", port: int = 5060) -> None:
        argv = agent_argv(tb, host, "recv", "--bind", bind, "--port", str(port))
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            self.kill()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"receiver in {host} did not start: {stderr}")

    def stop(self) -> list[str]:
        out, err = self.proc.communicate(timeout=10)  # closes stdin: the agent drains and exits
        assert self.proc.returncode == 0, err
        return [json.loads(line)["data"] for line in out.splitlines() if line.strip()]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@contextmanager
def receivers(tb: Testbed, *specs: tuple[str, str, int]) -> Iterator[list[Receiver]]:
    """Start one Receiver per (host, bind, port); never leave one running."""
    with ExitStack() as stack:
        started: list[Receiver] = []
        for host, bind, port in specs:
            receiver = Receiver(tb, host, bind=bind, port=port)
            stack.callback(receiver.kill)
            started.append(receiver)
        yield started


def collect(started: list[Receiver]) -> list[list[str]]:
    time.sleep(SETTLE_S)
    return [receiver.stop() for receiver in started]


def wait_inside(tb: Testbed, host: str, pid: int) -> None:
    """Wait until pid (started by `ip netns exec`) has entered host's namespace."""
    deadline = time.monotonic() + 5
    while pid not in tb.pids(host):
        assert time.monotonic() < deadline, f"{pid} never entered {host}"
        time.sleep(0.01)


def neigh_mac(tb: Testbed, host: str, address: str) -> str:
    fields = tb.ip(host, "neigh", "show", address).split()
    return fields[fields.index("lladdr") + 1] if "lladdr" in fields else ""


# no root needed ---------------------------------------------------------------------------------
def test_topology_defaults_and_toml(tmp_path: Path) -> None:
    topo = Topology()
    assert topo.prefix.startswith("ss") and len(topo.prefix) == 8
    assert topo.hosts == ("client", "primary", "shadow", "member1", "member2")
    assert topo.member_addresses == ("198.18.0.21", "198.18.0.22")
    assert (topo.vip, topo.primary, topo.shadow) == ("198.18.0.1", "198.18.0.2", "198.18.0.3")
    assert topo.client == "198.18.0.10"
    assert (topo.primary_replication, topo.shadow_replication) == ("198.18.0.129", "198.18.0.130")
    path = tmp_path / "bed.toml"
    path.write_text('[testbed]\nmember_count = 3\nfirst_member = "198.18.0.40"\nclient = "198.18.0.11"\n')
    custom = Topology.from_toml(path, prefix="sstoml")
    assert custom.prefix == "sstoml" and custom.members == ("member1", "member2", "member3")
    assert custom.member_addresses == ("198.18.0.40", "198.18.0.41", "198.18.0.42") and custom.client == "198.18.0.11"
    tb = Testbed(custom)
    assert tb.ns_name("member3") == "sstoml-member3" and tb.mac_of("member1") == "02:00:c6:12:00:28"
    assert all(len(tb.switch_port(host)) <= 15 for host in custom.hosts)
    assert tb.exec_argv("client", ["true"]) == ["ip", "netns", "exec", "sstoml-client", "true"]
    with pytest.raises(ValueError, match="outside"):
        Topology(client="10.0.0.1")
    with pytest.raises(ValueError, match="outside the service network"):
        Topology(client="198.18.0.200")
    path.write_text("[testbed]\nmembers = 3\n")
    with pytest.raises(ValueError, match="unknown"):
        Topology.from_toml(path)


def test_gratuitous_arp_frames_and_schedule() -> None:
    mac = bytes.fromhex("0200c6120003")
    request, reply = garp_frames(mac, "198.18.0.1")
    vip = bytes([198, 18, 0, 1])
    assert len(request) == len(reply) == 60
    assert request[:6] == reply[:6] == b"\xff" * 6 and request[6:12] == mac and request[12:14] == b"\x08\x06"
    assert request[20:22] == b"\x00\x01" and reply[20:22] == b"\x00\x02"
    assert request[22:28] == mac and request[28:32] == vip and request[38:42] == vip  # sender = target = VIP
    assert reply[32:38] == mac and reply[38:42] == vip  # a gratuitous reply needs tha == sha
    assert garp_offsets(3, 0.02, 5.0) == pytest.approx((0.0, 0.02, 0.1))


# item 1: the bed ----------------------------------------------------------------------------------
def test_testbed_builds_the_topology(testbed: Testbed) -> None:
    tb, topo = testbed, testbed.topology
    assert list_namespaces(tb.prefix) == sorted(tb.namespaces())
    primary = tb.ip("primary", "-4", "addr", "show", "dev", "svc0")
    assert f"inet {topo.primary}/25" in primary and f"inet {topo.vip}/25" in primary and "secondary" in primary
    assert f"inet {topo.vip}/" not in tb.ip("shadow", "-4", "addr")
    assert tb.mac_of("client") in tb.ip("client", "link", "show", "svc0")
    assert "inet6" not in tb.ip("client", "addr")  # IPv6 off: nothing outside 198.18.0.0/24
    assert tb.run(SWITCH, ["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]).strip() == "0"
    assert "198.18.0." not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    with receivers(tb, ("member2", "0.0.0.0", 5060), ("shadow", topo.shadow_replication, REP_PORT)) as started:
        assert send(tb, "client", topo.address_of("member2"), "to-member2") == {"sent": 1}
        assert send(tb, "primary", topo.shadow_replication, "heartbeat", dport=REP_PORT) == {"sent": 1}
        assert collect(started) == [["to-member2"], ["heartbeat"]]


# item 2: the tap ----------------------------------------------------------------------------------
def test_mirror_gives_primary_and_shadow_one_copy_each(testbed: Testbed) -> None:
    tb, vip = testbed, testbed.topology.vip
    mirror.install(tb)
    filters = tb.run(SWITCH, ["tc", "filter", "show", "dev", "sw-client", "ingress"])
    assert "mirred (Egress Mirror to device sw-shadow)" in filters and "at -12" in filters
    assert "static" in tb.run(SWITCH, ["bridge", "fdb", "show", "dev", "sw-primary"])
    with receivers(tb, ("primary", "0.0.0.0", 5060), ("shadow", "0.0.0.0", 5060)) as started:
        for host in ("client", "member1", "member2"):
            assert send(tb, host, vip, f"from-{host}") == {"sent": 1}
        got_primary, got_shadow = collect(started)
    expected = ["from-client", "from-member1", "from-member2"]
    assert got_primary == expected
    assert got_shadow == expected
    assert "meta pkttype set host" in tb.run("shadow", ["nft", "list", "table", "netdev", ACCEPT_TABLE])


# item 3: silent mode ------------------------------------------------------------------------------
def test_silent_mode_drops_vip_sourced_output_but_sendto_succeeds(testbed: Testbed) -> None:
    tb, topo = testbed, testbed.topology
    mirror.install(tb)
    silent.enable("svc0", topo.vip, netns=tb.ns_name("shadow"))
    ruleset = tb.run("shadow", ["nft", "list", "ruleset"])
    assert f"table netdev {silent.TABLE}" in ruleset and "hook egress" in ruleset
    assert f"ip saddr {topo.vip}" in ruleset and f"arp saddr ip {topo.vip}" in ruleset
    with receivers(tb, ("client", "0.0.0.0", 5060), ("primary", topo.primary_replication, REP_PORT)) as started:
        assert send(tb, "shadow", topo.client, "silenced", src=topo.vip, sport=5060) == {"sent": 1}  # no EPERM
        assert send(tb, "shadow", topo.client, "own-address", src=topo.shadow, sport=5061) == {"sent": 1}
        assert send(tb, "shadow", topo.primary_replication, "heartbeat", dport=REP_PORT) == {"sent": 1}
        at_client, at_primary = collect(started)
    assert at_client == ["own-address"]
    assert at_primary == ["heartbeat"]
    assert "counter packets 1 " in tb.run("shadow", ["nft", "list", "chain", "netdev", silent.TABLE, silent.CHAIN])
    silent.disable(netns=tb.ns_name("shadow"))
    assert not silent.is_enabled(netns=tb.ns_name("shadow"))
    with receivers(tb, ("client", "0.0.0.0", 5060)) as started:
        assert send(tb, "shadow", topo.client, "unsilenced", src=topo.vip, sport=5060) == {"sent": 1}
        assert collect(started) == [["unsilenced"]]


def test_shadow_never_answers_arp_for_the_vip(testbed: Testbed) -> None:
    tb, topo = testbed, testbed.topology
    mirror.install(tb)
    silent.enable("svc0", topo.vip, netns=tb.ns_name("shadow"))

    def probe() -> list[str]:
        return agent(tb, "client", "arp-probe", "--sender-ip", topo.client, "--target", topo.vip)["replies"]

    assert set(probe()) == {tb.mac_of("primary")}
    faults.crash(tb)  # no primary: any reply now could only come from the shadow
    assert probe() == []
    silent.disable(netns=tb.ns_name("shadow"))  # arp_ignore alone keeps it quiet too
    assert probe() == []


# item 4: takeover ---------------------------------------------------------------------------------
def test_takeover_moves_the_vip_and_the_client_follows(testbed: Testbed) -> None:
    tb, topo = testbed, testbed.topology
    mirror.install(tb)
    silent.enable("svc0", topo.vip, netns=tb.ns_name("shadow"))
    with receivers(tb, ("primary", "0.0.0.0", 5060), ("shadow", "0.0.0.0", 5060)) as started:
        send(tb, "client", topo.vip, "before")
        timings = agent(tb, "shadow", "takeover", "--ifname", "svc0", "--vip", topo.vip, "--prefixlen", "25")
        assert neigh_mac(tb, "client", topo.vip) == tb.mac_of("shadow")  # the client took the GARP
        send(tb, "client", topo.vip, "after")
        at_primary, at_shadow = collect(started)
    assert at_primary == ["before"]  # the primary is alive and still holds the VIP, yet gets nothing now
    assert at_shadow == ["before", "after"]
    print(f"in-process takeover: {timings}")
    assert set(timings["steps_ms"]) == {"nft", "vip", "garp"}
    assert timings["total_ms"] < 50
    shadow_addrs = tb.ip("shadow", "-4", "addr")
    assert f"inet {topo.vip}/25" in tb.ip("shadow", "-4", "addr", "show", "dev", "svc0")
    assert f"{topo.vip}/32" not in shadow_addrs
    tables = tb.run("shadow", ["nft", "list", "tables"])
    assert silent.TABLE not in tables and ACCEPT_TABLE not in tables
    with receivers(tb, ("client", "0.0.0.0", 5060)) as started:
        send(tb, "shadow", topo.client, "reply-from-vip", src=topo.vip, sport=5060)
        assert collect(started) == [["reply-from-vip"]]


def test_takeover_after_crash_serves_client_and_members(testbed: Testbed) -> None:
    tb, topo = testbed, testbed.topology
    mirror.install(tb)
    silent.enable("svc0", topo.vip, netns=tb.ns_name("shadow"))
    with receivers(tb, ("shadow", "0.0.0.0", 5060)) as started:
        send(tb, "client", topo.vip, "warm-arp-cache")
        faults.crash(tb)
        agent(tb, "shadow", "takeover", "--ifname", "svc0", "--vip", topo.vip, "--prefixlen", "25")
        send(tb, "client", topo.vip, "client-after")
        send(tb, "member1", topo.vip, "member1-after")
        assert collect(started) == [["warm-arp-cache", "client-after", "member1-after"]]


# item 5: faults -----------------------------------------------------------------------------------
def test_kill_fault_sigkills_processes_in_the_primary(testbed: Testbed) -> None:
    proc = subprocess.Popen(testbed.exec_argv("primary", ["sleep", "30"]))
    try:
        wait_inside(testbed, "primary", proc.pid)
        assert faults.kill(testbed, "primary") == [proc.pid]
        assert proc.wait(timeout=5) == -9
    finally:
        proc.kill()
        proc.wait()


def test_crash_fault_kills_the_links_and_the_tap_still_feeds_the_shadow(testbed: Testbed) -> None:
    tb, topo = testbed, testbed.topology
    mirror.install(tb)
    with receivers(tb, ("primary", "0.0.0.0", 5060), ("shadow", "0.0.0.0", 5060)) as started:
        send(tb, "client", topo.vip, "before-crash")
        faults.crash(tb)
        send(tb, "client", topo.vip, "during-crash")  # the client still sends to the primary's MAC
        at_primary, at_shadow = collect(started)
    assert at_primary == ["before-crash"]
    assert at_shadow == ["before-crash", "during-crash"]  # exactly once: the pinned MAC is never flooded
    assert "state DOWN" in tb.ip("primary", "link", "show", "svc0")
    assert "state DOWN" in tb.ip(SWITCH, "link", "show", "sw-primary")
    assert "NO-CARRIER" in tb.ip("shadow", "link", "show", "rep0")
    faults.recover(tb)
    assert "NO-CARRIER" not in tb.ip("shadow", "link", "show", "rep0")


def test_partition_cuts_heartbeats_only(testbed: Testbed) -> None:
    tb, topo = testbed, testbed.topology
    mirror.install(tb)
    faults.partition(tb)
    specs = [("shadow", topo.shadow_replication, REP_PORT), ("primary", "0.0.0.0", 5060), ("shadow", "0.0.0.0", 5060)]
    with receivers(tb, *specs) as started:
        send(tb, "primary", topo.shadow_replication, "lost-heartbeat", dport=REP_PORT)  # may fail or vanish
        send(tb, "client", topo.vip, "service")
        assert collect(started) == [[], ["service"], ["service"]]
    faults.heal(tb)
    with receivers(tb, ("shadow", topo.shadow_replication, REP_PORT)) as started:
        send(tb, "primary", topo.shadow_replication, "heartbeat", dport=REP_PORT)
        assert collect(started) == [["heartbeat"]]


# teardown ---------------------------------------------------------------------------------------
def test_teardown_leaves_nothing_even_when_the_test_fails(netns_ok: None) -> None:
    bed = Testbed()
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        with pytest.raises(RuntimeError, match="boom"), bed:
            sleeper = subprocess.Popen(bed.exec_argv("shadow", ["sleep", "30"]))
            wait_inside(bed, "shadow", sleeper.pid)
            raise RuntimeError("boom")
        assert list_namespaces(bed.prefix) == []
        assert sleeper is not None and sleeper.wait(timeout=5) == -9
    finally:
        bed.down()
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    leftover = Testbed().up()
    try:
        assert sorted(down_all(leftover.prefix)) == sorted(leftover.namespaces())
        assert list_namespaces(leftover.prefix) == []
        leftover.down()  # idempotent
    finally:
        leftover.down()
