"""`sipshadow ctl` and the metrics endpoint against a real node under real SIPp load (-nr).

A reload adds a member and a drain takes one out while calls run: every call completes, the
new member gets calls, the drained one gets none after the drain; a bad reload changes nothing.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUac, SippUas, free_port
from tests.conftest import sipp_members
from tests.operating import ctl

pytestmark = pytest.mark.sipp

CONFIG = """\
[cluster]
members = [{members}]
[health]
probe_interval_ms = 200
[status]
interval_s = 0.1
[control]
socket = "{socket}"
[metrics]
listen = "127.0.0.1:{metrics}"
"""



def config_text(members: list[SippUas], socket: Path, metrics: int) -> str:
    listed = ", ".join(f'"{m.address[0]}:{m.address[1]}"' for m in members)
    return CONFIG.format(members=listed, socket=socket, metrics=metrics)


def write_config(path: Path, members: list[SippUas], socket: Path, metrics: int) -> None:
    path.write_text(config_text(members, socket, metrics))


def test_reload_and_drain_under_load_fail_no_call(tmp_path: Path) -> None:
    socket, metrics_port = tmp_path / "control.sock", free_port()
    with sipp_members(tmp_path) as pair, sipp_members(tmp_path / "third") as spare:
        a, b, c = pair[0], pair[1], spare[0]
        node = AlgProcess(("127.0.0.1", free_port()), [], tmp_path / "node",  # members from the file alone
                          config_text=config_text([a, b], socket, metrics_port))  # fmt: skip
        config = tmp_path / "node" / "alg.toml"  # where the node reads it from
        with node:
            listed = ctl(socket, "members")
            assert listed.returncode == 0 and listed.stdout.count("up") == 2, listed
            uac = SippUac(node.listen, tmp_path, calls=600, rate=100, extra_args=["-nr", "-d", "2000"],
                          timeout=60).start()  # fmt: skip
            time.sleep(1.5)
            write_config(config, [a, b, c], socket, metrics_port)
            reloaded = ctl(socket, "reload")
            assert reloaded.returncode == 0 and f"+{c.address[0]}:{c.address[1]}" in reloaded.stdout, reloaded
            time.sleep(1.5)
            drained = ctl(socket, "drain", f"{a.address[0]}:{a.address[1]}")
            assert drained.returncode == 0 and "draining" in drained.stdout, drained
            calls_at_drain = json.loads(ctl(socket, "--json", "members").stdout)[0]["calls"]
            dialogs = ctl(socket, "--json", "dialogs", "--member", f"{a.address[0]}:{a.address[1]}", "--limit", "3")
            held = json.loads(dialogs.stdout)
            assert held["count"] > 0 and len(held["dialogs"]) == 3, held
            exposition = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            write_config(config, [a], socket, metrics_port)
            config.write_text(config.read_text().replace("probe_interval_ms = 200", "probe_interval_ms = -1"))
            bad = ctl(socket, "reload")
            result = uac.wait()
            members = json.loads(ctl(socket, "--json", "members").stdout)
            undrained = ctl(socket, "undrain", f"{a.address[0]}:{a.address[1]}")
            refused = ctl(socket, "takeover")
    assert result.successful_calls == 600 and result.failed_calls == 0, result.summary()
    assert members[0]["calls"] == calls_at_drain and members[0]["draining"], members  # none after the drain
    assert members[2]["calls"] > 0 and not members[2]["retired"], members  # the reloaded member took calls
    assert bad.returncode == 1 and "health.probe_interval_ms" in bad.stderr and bad.stderr.count("\n") == 1, bad
    assert not members[1]["retired"], "a bad reload changed nothing"
    assert undrained.returncode == 0 and "takes new calls again" in undrained.stdout
    assert refused.returncode == 1 and "solo" in refused.stderr
    for sample in ('sipshadow_requests_total{method="INVITE"}', "sipshadow_member_active_calls{",
                   'sipshadow_role{role="solo"} 1.0', "sipshadow_dialogs "):  # fmt: skip
        assert sample in exposition, sample
