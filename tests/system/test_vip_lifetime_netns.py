"""The VIP is leased, not owned: it follows the living node even when a killed primary's host lives on.

The first tests run `LinuxIdentity` and the `net.vip` helper in a fresh namespace of their own
(a veth pair, both ends inside it): this module re-runs itself there (`python -m ... SCENARIO`)
and prints what it saw as JSON. The last one is the attack from the issue on the tap-mode bed:
SIGKILL the primary's process, its host stays up, and its kernel must let go of the VIP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipshadow.lab.bed.testbed import SERVICE_IF, new_prefix, run_checked, run_quiet
from sipshadow.lab.netns_lab import NetnsLab
from sipshadow.lab.process import in_namespace

ROOT = Path(__file__).parents[2]
AGENT = Path(__file__).with_name("agent.py")
IFNAME = "svc0"
VIP = "198.18.0.1"
OWN = "198.18.0.2/25"
#: The kernel drops an expired address at its next lifetime check: up to about a second late.
EXPIRY_SLACK_S = 1.0


def vip_entries(ifname: str, netns: str | None = None, vip: str = VIP) -> list[dict[str, Any]]:
    """The VIP's `ip -j addr` entries on ifname (valid_life_time, dynamic, ...); [] when absent."""
    argv = ["ip", "-j", "-4", "addr", "show", "dev", ifname]
    shown = json.loads(subprocess.run(in_namespace(argv, netns), capture_output=True, text=True, check=True).stdout)
    return [entry for link in shown for entry in link.get("addr_info", []) if entry["local"] == vip]


# -- what runs inside the namespace ---------------------------------------------------------------
def scenario_lapse() -> dict[str, Any]:
    """`net.vip.hold` with a 1 s lifetime, never renewed: how long the kernel keeps it."""
    from sipshadow.net.vip import hold

    hold(IFNAME, VIP, 32, lifetime_s=1)
    added, started = vip_entries(IFNAME), time.monotonic()
    while vip_entries(IFNAME) and time.monotonic() - started < 5:
        time.sleep(0.02)
    return {"added": added, "gone_after_s": time.monotonic() - started, "left": vip_entries(IFNAME)}


async def scenario_start() -> dict[str, Any]:
    """A permanent VIP on svc0 (as the bare test bed leaves one): own() leases it, silence() drops it."""
    from sipshadow.runtime.identity import LinuxIdentity

    subprocess.run(["ip", "addr", "add", f"{VIP}/25", "dev", IFNAME], check=True)
    before = vip_entries(IFNAME)
    identity = LinuxIdentity(IFNAME, VIP, lifetime_s=1)
    identity.own()
    owned = {"svc0": vip_entries(IFNAME), "lo": vip_entries("lo")}
    subprocess.run(["ip", "addr", "add", f"{VIP}/24", "dev", IFNAME], check=True)  # a stale copy again
    identity.silence()
    return {"before": before, "owned": owned, "silenced": {"svc0": vip_entries(IFNAME), "lo": vip_entries("lo")}}


async def scenario_renewed() -> dict[str, Any]:
    """A claim with a 1 s lifetime, renewed for 3 s; then silence() stops the renewal."""
    from sipshadow.runtime.identity import LinuxIdentity

    identity = LinuxIdentity(IFNAME, VIP, lifetime_s=1)
    identity.claim()
    loop, samples = asyncio.get_running_loop(), []
    end = loop.time() + 3.0
    while loop.time() < end:
        samples.append(vip_entries(IFNAME))
        await asyncio.sleep(0.05)
    identity.silence()
    silenced = {"svc0": vip_entries(IFNAME), "lo": vip_entries("lo"), "renewal": identity.renewal is None}
    await asyncio.sleep(1.5)  # a renewal still running would put the VIP back on svc0
    return {"samples": samples, "silenced": silenced, "later": vip_entries(IFNAME)}


async def scenario_stall() -> dict[str, Any]:
    """The loop stands still past the lifetime: the VIP lapses and stays gone until resume()."""
    from sipshadow.runtime.identity import LinuxIdentity

    identity = LinuxIdentity(IFNAME, VIP, lifetime_s=1)
    identity.claim()
    await asyncio.sleep(0.5)
    time.sleep(1.0 + EXPIRY_SLACK_S + 0.3)  # the whole loop stands still, as under a frozen process
    await asyncio.sleep(0.05)  # the renewal wakes late and sees it
    assert identity.renewal is not None
    lapsed = {"svc0": vip_entries(IFNAME), "renewal_done": identity.renewal.done()}
    await asyncio.sleep(0.5)
    still_lapsed = vip_entries(IFNAME)  # nothing re-takes it behind the role machine's back
    identity.resume()  # the role machine's Unfence: serving on
    back = vip_entries(IFNAME)
    await asyncio.sleep(1.5)
    kept = vip_entries(IFNAME)
    identity.silence()
    return {"lapsed": lapsed, "still_lapsed": still_lapsed, "back": back, "kept": kept}


async def scenario_failing() -> dict[str, Any]:
    """Three renewals fail (two netlink errors, then a bug): one error line, and it keeps renewing."""
    from sipshadow.net import vip
    from sipshadow.runtime.identity import LinuxIdentity

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger("sipshadow.ha").addHandler(Keep())
    real_hold, failures = vip.hold, [vip.NetlinkError("injected"), OSError("injected"), RuntimeError("injected")]

    def flaky_hold(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop(0)
        real_hold(*args, **kwargs)

    setattr(vip, "hold", flaky_hold)  # noqa: B010 - the renewal looks it up when it starts
    identity = LinuxIdentity(IFNAME, VIP, lifetime_s=1)
    identity.claim()
    await asyncio.sleep(2.5)
    assert identity.renewal is not None
    alive, entries = not identity.renewal.done(), vip_entries(IFNAME)
    identity.silence()
    return {
        "alive": alive, "svc0": entries, "failures_left": len(failures),
        "logged": [(record.levelname, record.getMessage()) for record in records],
    }  # fmt: skip


SCENARIOS: dict[str, Callable[[], Any]] = {
    "lapse": scenario_lapse,
    "start": lambda: asyncio.run(scenario_start()),
    "renewed": lambda: asyncio.run(scenario_renewed()),
    "stall": lambda: asyncio.run(scenario_stall()),
    "failing": lambda: asyncio.run(scenario_failing()),
}

# -- the tests --------------------------------------------------------------------------------------


@pytest.fixture
def vip_netns(netns_ok: None) -> Iterator[str]:
    """A fresh namespace with a veth pair (svc0 carries 198.18.0.2/25), removed whatever happens."""
    name = f"{new_prefix()}-vip"
    run_checked(["ip", "netns", "add", name])
    try:
        script = (
            f"link set lo up\nlink add {IFNAME} type veth peer name svc1\n"
            f"link set {IFNAME} up\nlink set svc1 up\naddr add {OWN} dev {IFNAME}\n"
        )
        run_checked(["ip", "-n", name, "-batch", "-"], input=script)
        yield name
    finally:
        run_quiet(["ip", "netns", "del", name])


def run_scenario(netns: str, name: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.system.test_vip_lifetime_netns", name]
    proc = subprocess.run(in_namespace(argv, netns), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_an_unrenewed_vip_lapses_after_its_lifetime(vip_netns: str) -> None:
    result = run_scenario(vip_netns, "lapse")
    [added] = result["added"]
    assert added["prefixlen"] == 32 and added.get("dynamic") is True
    assert added["valid_life_time"] <= 1 and added["preferred_life_time"] <= 1
    print(f"1 s VIP gone after {result['gone_after_s']:.2f} s")
    assert result["left"] == [] and 0.9 <= result["gone_after_s"] <= 1.0 + EXPIRY_SLACK_S


def test_a_node_starting_as_primary_leases_the_vip_and_one_starting_as_shadow_drops_it(vip_netns: str) -> None:
    result = run_scenario(vip_netns, "start")
    [permanent] = result["before"]
    assert permanent["prefixlen"] == 25 and permanent["valid_life_time"] == 0xFFFFFFFF  # "forever"
    [leased] = result["owned"]["svc0"]
    assert leased["prefixlen"] == 32 and leased["valid_life_time"] <= 1 and result["owned"]["lo"] == []
    assert result["silenced"]["svc0"] == [] and [e["prefixlen"] for e in result["silenced"]["lo"]] == [32]


def test_the_renewal_keeps_the_vip_until_silence(vip_netns: str) -> None:
    result = run_scenario(vip_netns, "renewed")
    samples = result["samples"]
    assert len(samples) >= 40 and all(len(sample) == 1 for sample in samples), samples  # 3 s, three lifetimes
    assert all(sample[0]["valid_life_time"] <= 1 for sample in samples)
    assert result["silenced"] == {"svc0": [], "lo": result["silenced"]["lo"], "renewal": True}
    assert [entry["prefixlen"] for entry in result["silenced"]["lo"]] == [32]  # the shadow's tap address
    assert result["later"] == []


def test_a_stalled_loop_lets_the_vip_lapse_until_the_node_serves_on(vip_netns: str) -> None:
    result = run_scenario(vip_netns, "stall")
    assert result["lapsed"] == {"svc0": [], "renewal_done": True}
    assert result["still_lapsed"] == []
    assert len(result["back"]) == 1 and len(result["kept"]) == 1


def test_a_failing_renewal_logs_once_and_keeps_trying(vip_netns: str) -> None:
    result = run_scenario(vip_netns, "failing")
    assert result["failures_left"] == 0 and result["alive"] and len(result["svc0"]) == 1
    levels = [level for level, _ in result["logged"]]
    assert levels == ["ERROR", "WARNING"], result["logged"]  # one line for the streak, one when it heals
    assert "cannot renew the VIP" in result["logged"][0][1] and "renewed again" in result["logged"][1][1]


@pytest.mark.sipp
def test_a_killed_primary_host_drops_the_vip_and_only_the_new_primary_answers_arp(
    netns_ok: None, tmp_path: Path
) -> None:
    lab = NetnsLab(tmp_path / "lab", mode="active")
    with lab:
        tb, vip = lab.testbed, lab.topology.vip
        assert vip_entries(SERVICE_IF, tb.ns_name("primary"), vip)
        assert vip_entries(SERVICE_IF, tb.ns_name("shadow"), vip) == []  # a starting shadow holds none
        lifetime_s = 3  # replication.vip_lifetime_ms's default
        killed_at = lab.fail("kill")  # SIGKILL of the process; the host and its kernel stay up
        lab.wait_for_takeover()
        while vip_entries(SERVICE_IF, tb.ns_name("primary"), vip):
            assert time.monotonic() - killed_at < lifetime_s + 1.0, "the killed primary's host still holds the VIP"
            time.sleep(0.05)
        vanished_s = time.monotonic() - killed_at
        print(f"VIP gone from the killed primary's host {vanished_s:.2f} s after the kill")
        time.sleep(max(0.0, lifetime_s + 0.5 - vanished_s))  # the new primary's VIP outlives one lifetime
        [held] = vip_entries(SERVICE_IF, tb.ns_name("shadow"), vip)
        assert held["valid_life_time"] <= lifetime_s
        probe = [sys.executable, str(AGENT), "arp-probe", "--sender-ip", lab.topology.client, "--target", vip]
        replies = json.loads(tb.run("client", probe).strip().splitlines()[-1])["replies"]
        assert set(replies) == {tb.mac_of("shadow")}


if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
