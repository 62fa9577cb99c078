"""`sipshadow ctl`: send one command to a node's control socket and print the answer.

Exit codes: 0 done, 1 the node refused (the reason on stderr, one line), 2 the node could not
be reached. `--json` prints the answer's result as JSON, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sipshadow.runtime.control import request


def run_ctl(args: argparse.Namespace) -> int:
    arguments: dict[str, Any] = {}
    if args.ctl_command == "dialogs":
        arguments = {"member": args.member, "limit": args.limit}
    elif args.ctl_command in ("drain", "undrain"):
        arguments = {"member": args.member}
    elif args.ctl_command in ("takeover", "standby"):
        arguments = {"reason": args.reason}
    try:
        answer = request(args.socket, args.ctl_command, **arguments)
    except (OSError, ValueError) as error:
        print(f"sipshadow ctl: cannot reach the node at {args.socket}: {error}", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"sipshadow ctl: {args.ctl_command}: {answer.get('error', 'refused')}", file=sys.stderr)
        return 1
    result: Any = answer.get("result")
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.ctl_command == "members":
        _members(result)
    elif args.ctl_command == "dialogs":
        _dialogs(result)
    elif args.ctl_command == "status":
        _status(result)
    else:
        print(result)
    return 0


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _members(members: list[dict[str, Any]]) -> None:
    rows = [["MEMBER", "TRANSPORT", "WEIGHT", "STATE", "CALLS", "ACTIVE"]]
    for m in members:
        state = "retired" if m["retired"] else "draining" if m["draining"] else "up" if m["up"] else "down"
        rows.append([m["member"], m["transport"], str(m["weight"]), state, str(m["calls"]), str(m["active_calls"])])
    _table(rows)


def _dialogs(result: dict[str, Any]) -> None:
    listed = result["dialogs"]
    print(f"{result['count']} calls held" + (f" ({len(listed)} listed)" if len(listed) < result["count"] else ""))
    if listed:
        rows = [["CALL-ID", "MEMBER", "CALLER", "TRANSPORT", "STATE", "DIALOGS"]]
        rows += [[d["call_id"], d["member"], d["caller"], d["transport"], d["state"], str(d["dialogs"])]
                 for d in listed]  # fmt: skip
        _table(rows)


def _status(document: dict[str, Any]) -> None:
    ha = document.get("ha") or {}
    role = ha.get("role", "solo")
    line = [f"role {role}"]
    if ha:
        line.append(f"epoch {ha['epoch']}, mode {ha['mode']}, input {ha.get('input')}, "
                    f"peer {'alive' if ha.get('peer_alive') else 'silent'}")  # fmt: skip
    print("; ".join(line))
    if document.get("service"):
        counters = document.get("counters") or {}
        print(f"service {document['service']}, policy {document.get('policy')}, up {document.get('uptime_s')} s, "
              f"{document.get('dialogs')} dialogs, {counters.get('calls', 0)} calls")  # fmt: skip
    replication = document.get("replication")
    if replication:
        print(f"replication: entry {replication['seq']}, released {replication['released']}, shadow "
              f"{'attached' if replication['shadow_attached'] else 'absent'}, lag {replication.get('lag_entries', 0)} "
              f"entries / {replication.get('lag_bytes', 0)} bytes")  # fmt: skip
    shadow = ha.get("shadow")
    if shadow:
        print(f"shadow: {'synced' if shadow['synced'] else 'not synced'}, applied {shadow['applied']}, "
              f"{shadow['dialogs']} dialogs, {shadow['divergences']} divergences")  # fmt: skip
    for takeover in ha.get("takeovers", []):
        if takeover.get("aborted"):
            print(f"takeover epoch {takeover['epoch']}: aborted ({takeover['aborted']})")
        else:
            print(f"takeover epoch {takeover['epoch']}: {takeover.get('ms')} ms, {takeover.get('dialogs')} dialogs")
    for alarm in ha.get("alarms", []):
        print(f"ALARM: {alarm}")
