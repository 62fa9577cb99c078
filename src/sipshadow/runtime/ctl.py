"""`sipshadow ctl`: send one command to a node's control socket and print the answer.

Exit codes: 0 done, 1 the node refused (the reason on stderr, one line), 2 the node could not
be reached. `--json` prints the answer's result as JSON, for scripts.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

#: Where `ctl` looks for a node's control socket unless told (the systemd unit's RuntimeDirectory).
DEFAULT_CONTROL_SOCKET = "/run/sipshadow/control.sock"


def add_ctl_parser(commands: Any) -> argparse.ArgumentParser:
    """`sipshadow ctl ...` in `commands` (argparse's subparsers of the `sipshadow` parser)."""
    ctl: argparse.ArgumentParser = commands.add_parser("ctl", help="control a running node through its control.socket")
    _ctl_arguments(ctl)
    return ctl


def ctl_main(argv: list[str]) -> int:
    """`sipshadow ctl` alone (argv after "ctl"): imports nothing of the node, so it starts fast."""
    parser = argparse.ArgumentParser(prog="sipshadow ctl", description="control a running node")
    _ctl_arguments(parser)
    return run_ctl(parser.parse_args(argv))


def _ctl_arguments(ctl: argparse.ArgumentParser) -> None:
    ctl.add_argument("--socket", type=Path, default=Path(DEFAULT_CONTROL_SOCKET), help="the node's control.socket")
    ctl.add_argument("--json", action="store_true", help="the answer as JSON")
    ctl_commands = ctl.add_subparsers(dest="ctl_command", required=True)
    ctl_commands.add_parser("status", help="the node's status document")
    dialogs = ctl_commands.add_parser("dialogs", help="count and list the calls held")
    dialogs.add_argument("--member", metavar="HOST:PORT", help="only this member's calls")
    dialogs.add_argument("--limit", type=int, default=100, help="list at most this many")
    ctl_commands.add_parser("members", help="members: health, drain, calls")
    for name, text in (("drain", "no new calls to MEMBER; its calls finish"), ("undrain", "MEMBER takes new calls")):
        command = ctl_commands.add_parser(name, help=text)
        command.add_argument("member", metavar="MEMBER", help="HOST:PORT as in the config")
    ctl_commands.add_parser("reload", help="members, weights, policy and health settings from the config file")
    ctl_commands.add_parser("switchover", help="hand the service to the shadow (planned; no call lost)")
    for name, text in (("takeover", "a shadow takes over now (keepalived MASTER)"),
                       ("standby", "a serving node steps down to shadow (keepalived BACKUP/FAULT)")):  # fmt: skip
        command = ctl_commands.add_parser(name, help=text)
        command.add_argument("--reason", default="", help="logged by the node")
    fifo = ctl_commands.add_parser(
        "keepalived-fifo", help="follow keepalived's vrrp_notify_fifo: its state changes, in order (docs/keepalived.md)"
    )
    fifo.add_argument("--instance", default="sipshadow", help="the vrrp_instance to follow")
    fifo.add_argument("fifo", type=Path, metavar="FIFO", help="keepalived passes it as the last argument")


def request(path: Path, command: str, timeout_s: float = 30.0, **arguments: Any) -> dict[str, Any]:
    """One request over the control socket (`runtime.control`'s protocol), blocking: the answer
    object. Raises OSError when the socket cannot be reached, ValueError when the answer is not JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buffer += chunk
    answer = json.loads(buffer)
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    return answer


def run_ctl(args: argparse.Namespace) -> int:
    if args.ctl_command == "keepalived-fifo":
        from sipshadow.runtime import keepalived_fifo

        return keepalived_fifo.main(args.fifo, args.instance, lambda order, reason: _order(args.socket, order, reason))
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


def _order(path: Path, command: str, reason: str) -> str:
    """One takeover/standby order: the node's answer as a line; OSError when it cannot be reached."""
    try:
        answer = request(path, command, reason=reason)
    except ValueError as error:
        return f"refused: the answer is not JSON ({error})"
    return str(answer.get("result")) if answer.get("ok") else f"refused: {answer.get('error', 'refused')}"


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
              f"{_shadow_state(replication)}, lag {replication.get('lag_entries', 0)} "
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


def _shadow_state(replication: dict[str, Any]) -> str:
    if not replication["shadow_attached"]:
        return "absent"
    return "joining" if replication.get("shadow_joining") else "attached"
