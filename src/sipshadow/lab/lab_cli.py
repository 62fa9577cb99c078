"""`sipshadow lab up|down|fail`: the namespace test bed for an operator's hands.

`up` leaves the bed running (namespaces, mirror, SIPp members, the pair of nodes) and notes
its prefix in a state file; `fail` injects a fault into the primary; `down` removes every
namespace with that prefix and every process inside it, whatever state it is in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sipshadow.lab.bed import faults
from sipshadow.lab.bed.testbed import Testbed, Topology, down_all
from sipshadow.lab.netns_lab import FAULTS, NetnsLab

STATE = Path("runs/lab/state.json")


def lab_up(topology_file: Path | None, mode: str, workdir: Path) -> int:
    try:  # a bad file is the operator's typo: one line, not a traceback
        topology = Topology.from_toml(topology_file) if topology_file else Topology()
    except (OSError, ValueError, TypeError) as error:
        problem = error.strerror if isinstance(error, OSError) else error
        print(f"sipshadow: --topology: {topology_file}: {problem}", file=sys.stderr)
        return 2
    if STATE.exists():
        print(f"sipshadow: a lab is already up ({STATE}); run `sipshadow lab down` first", file=sys.stderr)
        return 2
    lab = NetnsLab(workdir, mode=mode, topology=topology)
    try:
        lab.up()
    except BaseException:
        lab.down()
        raise
    lab.testbed.keep()
    STATE.parent.mkdir(parents=True, exist_ok=True)
    state = {"prefix": topology.prefix, "mode": mode, "workdir": str(workdir),
             "topology": str(topology_file) if topology_file else None,
             "primary_pid": lab.nodes["primary"].pid}  # fmt: skip
    STATE.write_text(json.dumps(state, indent=2))
    print(f"lab {topology.prefix} up ({mode}): VIP {topology.vip}:5060, members {', '.join(topology.member_addresses)}")
    print(f"  client namespace: {lab.testbed.ns_name('client')}   logs and status files: {workdir}")
    print(f"  e.g. ip netns exec {lab.testbed.ns_name('shadow')} nft list ruleset")
    return 0


def lab_down() -> int:
    prefix = json.loads(STATE.read_text())["prefix"] if STATE.exists() else None
    if prefix is None:
        print("sipshadow: no lab is up (no state file)")
        return 0
    removed = down_all(prefix)
    STATE.unlink()
    print(f"lab {prefix} down: removed {len(removed)} namespaces")
    return 0


def lab_fail(host: str, how: str) -> int:
    if host != "primary" or how not in FAULTS:
        print(f"sipshadow: can fail the primary with --how {' | '.join(FAULTS)}", file=sys.stderr)
        return 2
    if not STATE.exists():
        print("sipshadow: no lab is up", file=sys.stderr)
        return 2
    state = json.loads(STATE.read_text())
    topology_file = state.get("topology")
    topology = (
        Topology.from_toml(topology_file, prefix=state["prefix"]) if topology_file else Topology(prefix=state["prefix"])
    )
    bed = Testbed(topology)
    if how == "kill":
        faults.kill(bed, "primary", [state["primary_pid"]])
    elif how == "crash":
        faults.crash(bed, "primary")
    else:
        faults.partition(bed)
    print(f"primary: {how}")
    return 0
