"""Every flag of every `sipshadow` command has its documented effect, proved row by row.

The argparse tree is walked, and every flag in it must have a row in one of the tables below,
so a flag that is parsed, documented and then ignored (as `serve --role` and `--peer` were)
cannot come back unnoticed. `serve` flags are proved on the NodeConfig the node would run
with (and end to end for a solo node and a pair); `lab` flags on the arguments handed to the
function that does the work (monkeypatched: no SIPp, no namespaces). Bad values already
covered by test_config.py (`--listen`, `--config`) and test_experiment_cli.py (`--modes`,
`--rates`, `--repeat 0`) are not repeated here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sipshadow import cli
from sipshadow.cli import main, node_config
from sipshadow.core import Gateway
from sipshadow.determinism import SystemEntropy
from sipshadow.lab.alg import AlgProcess, options_ping
from sipshadow.lab.sipp import free_port
from sipshadow.runtime.config import ConfigFile, NodeConfig, build
from sipshadow.runtime.status import HaStatus, StatusDocument, snapshot, write_atomically

# -- the parser, walked ---------------------------------------------------------------------


def parsers(
    parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's parser, with the words that reach it."""
    parser = parser or cli._parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def flags_of(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The flags and positionals a user gives (not -h, not the subcommand slot)."""
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            yield action


def flag_name(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def every_flag() -> set[tuple[str, str]]:
    return {(" ".join(path) or "sipshadow", flag_name(a)) for path, parser in parsers() for a in flags_of(parser)}


def run(argv: list[str]) -> int:
    """`main`, with argparse's own exit turned into the code it carries."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


def under_cwd(path: Path) -> str:
    """A path handed on must be absolute (the lab runs tools with other working directories)."""
    assert path.is_absolute(), f"{path} was handed on relative"
    return str(path.relative_to(Path.cwd().resolve()))


# -- serve: flag over file, file without the flag -------------------------------------------

KEY = "0123456789abcdef0123"
BASE = ('cluster.members = ["127.0.0.1:5070"]', 'replication.listen = "127.0.0.1:7001"', f'replication.key = "{KEY}"')
PEER = 'replication.peer = "127.0.0.1:7002"'


@dataclass(frozen=True)
class Override:
    """A serve flag: the file (or the default) says `without`, the flag says `with_flag`; the flag wins."""

    flag: str
    argv: tuple[str, ...]
    file: tuple[str, ...]
    read: Callable[[NodeConfig], object]
    without: object
    with_flag: object
    base: tuple[str, ...] = ("--config", "{config}")


def role(config: NodeConfig) -> str:
    return config.replication.role if config.replication else "solo"


SERVE = [
    Override("--config", ("--config", "{config}"), ("health.probe_interval_ms = 250",),
             lambda c: c.gateway.probe_interval_s, 1.0, 0.25, base=("--member", "127.0.0.1:5070")),
    Override("--listen", ("--listen", "127.0.0.1:6000"), ('service.listen = "127.0.0.1:5060"',),
             lambda c: c.listen, ("127.0.0.1", 5060), ("127.0.0.1", 6000)),
    Override("--member", ("--member", "127.0.0.1:5080", "--member", "[::1]:5081"), (),
             lambda c: [m.address for m in c.gateway.members], [("127.0.0.1", 5070)],
             [("127.0.0.1", 5080), ("::1", 5081)]),
    Override("--policy", ("--policy", "call-id-hash"), ('cluster.policy = "weighted-random"',),
             lambda c: c.gateway.policy, "weighted-random", "call-id-hash"),
    Override("--status-file", ("--status-file", "/run/b.json"), ('status.file = "/run/a.json"',),
             lambda c: c.status_file, Path("/run/a.json"), Path("/run/b.json")),
    Override("--role", ("--role", "primary"), (PEER,), role, "solo", "primary"),
    Override("--role", ("--role", "primary"), (PEER, 'replication.role = "shadow"'), role, "shadow", "primary"),
    Override("--role", ("--role", "shadow"), (PEER, 'replication.role = "primary"'), role, "primary", "shadow"),
    Override("--role", ("--role", "solo"), (PEER, 'replication.role = "primary"'), role, "primary", "solo"),
    Override("--peer", ("--peer", "127.0.0.1:7003"), (PEER, 'replication.role = "primary"'),
             lambda c: c.replication and c.replication.peer, ("127.0.0.1", 7002), ("127.0.0.1", 7003)),
    Override("--peer", ("--role", "shadow", "--peer", "[::1]:7003"), (),
             lambda c: c.replication and c.replication.peer, None, ("::1", 7003)),
]  # fmt: skip


def serve_config(tmp_path: Path, row: Override, argv: tuple[str, ...]) -> NodeConfig:
    path = tmp_path / "node.toml"
    path.write_text("\n".join((*BASE, *row.file)) + "\n")
    words = [word.replace("{config}", str(path)) for word in (*row.base, *argv)]
    return node_config(cli._parser().parse_args(["serve", *words]))


@pytest.mark.parametrize("row", SERVE, ids=lambda row: f"{row.flag}:{'/'.join(row.argv[1::2])}")
def test_serve_flag_wins_over_the_file_and_the_file_holds_without_it(tmp_path: Path, row: Override) -> None:
    assert row.without != row.with_flag  # the row must be able to tell an ignored flag
    assert row.read(serve_config(tmp_path, row, ())) == row.without
    assert row.read(serve_config(tmp_path, row, row.argv)) == row.with_flag


# -- lab: the value each flag hands to the function that does the work ----------------------

LOOPBACK, EXPERIMENT = "sipshadow.lab.loopback.run_loopback", "sipshadow.lab.experiment.run_experiment"
CHAOS = "sipshadow.lab.chaos.run_chaos"
FUZZ = "sipshadow.lab.live_fuzz.run_live_fuzz"
UP, FAIL, DOWN = "sipshadow.lab.lab_cli.lab_up", "sipshadow.lab.lab_cli.lab_fail", "sipshadow.lab.lab_cli.lab_down"


@dataclass(frozen=True)
class Passed:
    """A lab flag and what it must hand on; `baseline` (None: no such run) must hand on something else."""

    command: str
    flag: str | None
    argv: tuple[str, ...]
    target: str
    read: Callable[[dict[str, Any]], object]
    expected: object
    baseline: tuple[str, ...] | None = ()


LAB = [
    Passed("lab chaos", "--minutes", ("--minutes", "2.5"), CHAOS, lambda got: got["config"].minutes, 2.5),
    Passed("lab chaos", "--rate", ("--rate", "50"), CHAOS, lambda got: got["config"].rate, 50.0),
    Passed("lab chaos", "--seed", ("--seed", "7"), CHAOS, lambda got: got["config"].seed, 7),
    Passed("lab chaos", "--out", ("--out", "runs/c1"), CHAOS, lambda got: under_cwd(got["config"].out), "runs/c1"),
    Passed("lab fuzz", "--seconds", ("--seconds", "12"), FUZZ, lambda got: got["config"].seconds, 12.0),
    Passed("lab fuzz", "--rate", ("--rate", "40"), FUZZ, lambda got: got["config"].rate, 40.0),
    Passed("lab fuzz", "--fuzz-rate", ("--fuzz-rate", "90"), FUZZ, lambda got: got["config"].fuzz_rate, 90.0),
    Passed("lab fuzz", "--seed", ("--seed", "5"), FUZZ, lambda got: got["config"].seed, 5),
    Passed("lab fuzz", "--out", ("--out", "runs/f1"), FUZZ, lambda got: under_cwd(got["config"].out), "runs/f1"),
    Passed("lab loopback", "--calls", ("--calls", "10"), LOOPBACK, lambda got: got["calls"], 10),
    Passed("lab loopback", "--rate", ("--rate", "2.5"), LOOPBACK, lambda got: got["rate"], 2.5),
    Passed("lab loopback", "--policy", ("--policy", "call-id-hash"), LOOPBACK, lambda got: got["policy"],
           "call-id-hash"),
    Passed("lab loopback", "--out", ("--out", "logs/lb"), LOOPBACK, lambda got: under_cwd(got["out"]), "logs/lb"),
    Passed("lab up", "--topology", ("--topology", "bed.toml"), UP, lambda got: got["topology_file"], Path("bed.toml")),
    Passed("lab up", "--mode", ("--mode", "network"), UP, lambda got: got["mode"], "network"),
    Passed("lab up", "--out", ("--out", "beds/one"), UP, lambda got: under_cwd(got["workdir"]), "beds/one"),
    Passed("lab down", None, (), DOWN, lambda got: got, {}, baseline=None),
    Passed("lab fail", "host", ("primary", "--how", "kill"), FAIL, lambda got: got["host"], "primary", baseline=None),
    Passed("lab fail", "--how", ("primary", "--how", "partition"), FAIL, lambda got: got["how"], "partition",
           baseline=("primary", "--how", "kill")),
    Passed("lab experiment", "--modes", ("--modes", "active,none"), EXPERIMENT,
           lambda got: got["config"].modes, ("active", "none")),
    Passed("lab experiment", "--rates", ("--rates", "10,30"), EXPERIMENT, lambda got: got["config"].rates, (10, 30)),
    Passed("lab experiment", "--call-duration", ("--call-duration", "8"), EXPERIMENT,
           lambda got: got["config"].call_duration_s, 8.0),
    Passed("lab experiment", "--fail-at", ("--fail-at", "1.5"), EXPERIMENT, lambda got: got["config"].fail_at_s, 1.5),
    Passed("lab experiment", "--after-failure", ("--after-failure", "2"), EXPERIMENT,
           lambda got: got["config"].after_failure_s, 2.0),
    Passed("lab experiment", "--repeat", ("--repeat", "5"), EXPERIMENT, lambda got: got["config"].repeat, 5),
    Passed("lab experiment", "--members", ("--members", "kamailio"), EXPERIMENT,
           lambda got: got["config"].members, "kamailio"),
    Passed("lab experiment", "--fault", ("--fault", "kill"), EXPERIMENT, lambda got: got["config"].fault, "kill"),
    Passed("lab experiment", "--parallel", ("--parallel", "2"), EXPERIMENT, lambda got: got["config"].parallel, 2),
    Passed("lab experiment", "--records", ("--records", "postgres"), EXPERIMENT,
           lambda got: got["config"].records, "postgres"),
    Passed("lab experiment", "--transport", ("--transport", "udp,tcp1"), EXPERIMENT,
           lambda got: got["config"].transports, ("udp", "tcp1")),
    Passed("lab experiment", "--no-cost", ("--no-cost",), EXPERIMENT, lambda got: got["measure_cost"], False),
    Passed("lab experiment", "--out", ("--out", "res"), EXPERIMENT, lambda got: under_cwd(got["config"].out), "res"),
]  # fmt: skip


def record(monkeypatch: pytest.MonkeyPatch, target: str) -> list[dict[str, Any]]:
    """Replace `target` by a stub that keeps its bound arguments (defaults filled in) and returns 0."""
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    signature = inspect.signature(getattr(module, name))
    calls: list[dict[str, Any]] = []

    def stub(*args: Any, **kwargs: Any) -> int:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return 0

    monkeypatch.setattr(module, name, stub)
    return calls


@pytest.fixture
def lab_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run from tmp_path (the lab's state file is relative) and leave this process's signal handlers alone."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_interrupt_on", lambda *signums: None)


@pytest.mark.parametrize("row", LAB, ids=lambda row: f"{row.command}:{row.flag}")
@pytest.mark.usefixtures("lab_sandbox")
def test_lab_flag_reaches_the_function_that_does_the_work(monkeypatch: pytest.MonkeyPatch, row: Passed) -> None:
    calls = record(monkeypatch, row.target)
    assert main([*row.command.split(), *row.argv]) == 0
    assert row.read(calls[-1]) == row.expected
    if row.baseline is not None:
        assert main([*row.command.split(), *row.baseline]) == 0
        assert row.read(calls[-1]) != row.expected, "the default already gives this value: the row proves nothing"


# -- stats, --version ----------------------------------------------------------------------


def status_document() -> StatusDocument:
    """What a serving node writes, from the same function its status file comes from."""
    config = build(ConfigFile(), listen="127.0.0.1:5999", members=["127.0.0.1:5070", "[::1]:5071"],
                   policy="call-id-hash")  # fmt: skip
    return snapshot(Gateway(config.gateway, SystemEntropy()), started_at=0.0, now=42.0, internal_errors=0)


def as_table(out: str) -> bool:
    with pytest.raises(ValueError):
        json.loads(out)
    return all(text in out for text in ("127.0.0.1:5999", "call-id-hash", "127.0.0.1:5070", "[::1]:5071", "requests"))


STATS = [
    ("file", (), as_table),
    ("--json", ("--json",), lambda out: json.loads(out) == json.loads(msgspec.json.encode(status_document()))),
]


@pytest.mark.parametrize(("flag", "argv", "check"), STATS, ids=[row[0] for row in STATS])
def test_stats_prints_the_status_file_as_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, argv: tuple[str, ...], check: Callable[[str], bool]
) -> None:
    path = tmp_path / "status.json"
    write_atomically(path, status_document())
    assert main(["stats", str(path), *argv]) == 0
    assert check(capsys.readouterr().out)


def test_stats_reads_a_shadow_nodes_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "status.json"
    ha = HaStatus(role="shadow", epoch=0, mode="active", peer_alive=True, heartbeats_refused=0, detector_stalls=0,
                  gated_outputs=0, takeovers=[], input="forward", arbiter_peer_alive=False, held_by_arbiter=0,
                  step_downs=0, fences=0, aborted_takeovers=0)  # fmt: skip
    write_atomically(path, StatusDocument(ha=ha))
    assert main(["stats", str(path)]) == 0
    assert "shadow" in capsys.readouterr().out


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sipshadow {importlib.metadata.version('sipshadow')}"


# -- ctl: every flag reaches the control socket ------------------------------------------------

CTL = [  # (argv after `ctl --socket PATH`, the command the node receives, its arguments)
    (["dialogs", "--member", "192.0.2.7:5060", "--limit", "7"], "dialogs", {"member": "192.0.2.7:5060", "limit": 7}),
    (["drain", "192.0.2.7:5060"], "drain", {"member": "192.0.2.7:5060"}),
    (["undrain", "192.0.2.8:5060"], "undrain", {"member": "192.0.2.8:5060"}),
    (["takeover", "--reason", "keepalived MASTER"], "takeover", {"reason": "keepalived MASTER"}),
    (["standby", "--reason", "keepalived BACKUP"], "standby", {"reason": "keepalived BACKUP"}),
]


@contextlib.contextmanager
def echoing_control_socket(path: Path) -> Iterator[None]:
    """A real control server whose every command answers with its name and arguments."""
    from sipshadow.runtime.control import ControlServer

    loop = asyncio.new_event_loop()

    def echo(name: str):
        async def command(arguments: dict[str, object]) -> object:
            return {"command": name, "arguments": arguments}

        return command

    names = ("status", "dialogs", "members", "drain", "undrain", "reload", "switchover", "takeover", "standby")
    server = ControlServer(path, {name: echo(name) for name in names})
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        pending = asyncio.all_tasks(loop)  # a connection's coroutine still waiting for its next line
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        loop.close()


@pytest.mark.parametrize(("argv", "command", "arguments"), CTL, ids=[row[0][0] for row in CTL])
def test_ctl_flags_reach_the_control_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                            command: str, arguments: dict[str, object]) -> None:  # fmt: skip
    path = tmp_path / "control.sock"
    with echoing_control_socket(path):
        assert main(["ctl", "--socket", str(path), "--json", *argv]) == 0
    assert json.loads(capsys.readouterr().out) == {"command": command, "arguments": arguments}


def test_ctl_keepalived_fifo_orders_the_named_instance_from_the_fifo_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, fifo = tmp_path / "control.sock", tmp_path / "vrrp.fifo"

    def keepalived() -> None:  # writes two changes, then ends the reader as keepalived does: SIGTERM
        deadline = time.monotonic() + 5
        while not fifo.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b'INSTANCE "vi_2" MASTER 100\nINSTANCE "sipshadow" MASTER 100\n')
        os.close(fd)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    writer = threading.Thread(target=keepalived, daemon=True)
    with echoing_control_socket(path):
        writer.start()
        assert main(["ctl", "--socket", str(path), "keepalived-fifo", "--instance", "vi_2", str(fifo)]) == 0
    writer.join(1)
    out = capsys.readouterr().out
    assert "takeover: {'command': 'takeover', 'arguments': {'reason': 'keepalived-MASTER'}}" in out
    assert out.count("takeover:") == 1, out


def test_ctl_without_a_node_says_so_in_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "--socket", str(tmp_path / "none.sock"), "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the node" in err


# -- cdr: export and flush read the store and journal they are given ------------------------


def cdr_record(number: int) -> Any:
    from sipshadow.core.records import CallRecord

    return CallRecord(record_id=f"{number:032x}", call_id=f"c{number}", from_tag="f", to_tag="t", from_uri="sip:a@x",
                      to_uri="sip:b@x", caller="192.0.2.10:5060", member="192.0.2.21:5080", transport="udp",
                      invited_at=1_800_000_000.0 + 60 * number, answered_at=None,
                      ended_at=1_800_000_001.0 + 60 * number, status=486, ended_by="callee", end_reason="failed",
                      duration_s=0.0)  # fmt: skip


def test_cdr_flags_pick_the_store_the_journal_the_window_and_the_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sipshadow.core.records import encode_record
    from sipshadow.records.sqlite import SqliteStore

    store = tmp_path / "cdr.sqlite"
    SqliteStore(store).write([cdr_record(0), cdr_record(1)])
    journal = tmp_path / "left.journal"
    journal.write_bytes(encode_record(cdr_record(2)) + b"\n" + encode_record(cdr_record(1)) + b"\n")
    assert main(["cdr", "flush", "--store", str(store), "--journal", str(journal)]) == 0
    assert capsys.readouterr().out.startswith("1 records written, 1 already there, 0 journal bytes left")
    config = tmp_path / "node.toml"
    config.write_text(f'[cdr]\nstore = "{store}"\njournal = "{tmp_path / "node.journal"}"\n')
    (tmp_path / "node.journal").write_bytes(encode_record(cdr_record(3)) + b"\n")
    assert main(["cdr", "flush", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("1 records written")
    # 2027-01-15T08:01:00Z is record 1's INVITE; --since inclusive, --until exclusive
    assert main(["cdr", "export", "--store", str(store), "--format", "json", "--since", "2027-01-15T08:01:00Z",
                 "--until", str(1_800_000_000.0 + 180)]) == 0  # fmt: skip
    assert [row["call_id"] for row in json.loads(capsys.readouterr().out)] == ["c1", "c2"]
    assert main(["cdr", "export", "--config", str(config)]) == 0  # csv by default, every record
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("record_id,call_id") and len(lines) == 5
    assert ",2027-01-15T08:00:00.000000Z," in lines[1]
    assert main(["cdr", "export", "--store", str(store), "--since", "yesterday"]) == 2
    assert "--since/--until" in capsys.readouterr().err


# -- every flag has a row; every help documents its flags ------------------------------------

PROVED = {
    **{("serve", row.flag): "test_serve_flag_wins_over_the_file_and_the_file_holds_without_it" for row in SERVE},
    **{(row.command, row.flag): "test_lab_flag_reaches_the_function_that_does_the_work" for row in LAB if row.flag},
    **{("stats", row[0]): "test_stats_prints_the_status_file_as_asked" for row in STATS},
    ("sipshadow", "--version"): "test_version_prints_the_installed_package_version",
    **{("ctl", flag): "test_ctl_flags_reach_the_control_socket" for flag in ("--socket", "--json")},
    ("ctl dialogs", "--member"): "test_ctl_flags_reach_the_control_socket",
    ("ctl dialogs", "--limit"): "test_ctl_flags_reach_the_control_socket",
    ("ctl drain", "member"): "test_ctl_flags_reach_the_control_socket",
    ("ctl undrain", "member"): "test_ctl_flags_reach_the_control_socket",
    ("ctl takeover", "--reason"): "test_ctl_flags_reach_the_control_socket",
    ("ctl standby", "--reason"): "test_ctl_flags_reach_the_control_socket",
    **{("ctl keepalived-fifo", flag): "test_ctl_keepalived_fifo_orders_the_named_instance_from_the_fifo_it_is_given"
       for flag in ("--instance", "fifo")},
    **{("cdr export", flag): "test_cdr_flags_pick_the_store_the_journal_the_window_and_the_format"
       for flag in ("--config", "--store", "--since", "--until", "--format")},
    **{("cdr flush", flag): "test_cdr_flags_pick_the_store_the_journal_the_window_and_the_format"
       for flag in ("--config", "--store", "--journal")},
}


def test_every_flag_of_every_command_has_a_row_proving_its_effect() -> None:
    walked = every_flag()
    assert sorted(walked - PROVED.keys()) == [], "flags with no row proving they do anything: add one"
    assert sorted(PROVED.keys() - walked) == [], "rows for flags the parser no longer has"
    assert all(name in globals() for name in PROVED.values())


HELPS = list(parsers())


@pytest.mark.parametrize(("path", "parser"), HELPS, ids=[" ".join(path) or "sipshadow" for path, _ in HELPS])
def test_help_documents_every_flag_of_its_command(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert run([*path, "--help"]) == 0
    out = capsys.readouterr().out
    for action in flags_of(parser):
        assert action.help, f"{flag_name(action)} has no help text"
        assert flag_name(action) in out or all(choice in out for choice in action.choices or ())


# -- bad values: exit 2 and a line naming the flag, before any work -------------------------


@dataclass(frozen=True)
class Refused:
    """A bad value; `one_line`: our own message (argparse's own errors come after a usage line)."""

    argv: tuple[str, ...]
    names: str
    says: str
    one_line: bool = True
    files: tuple[tuple[str, str], ...] = ()


NODE = ("serve", "--config", "node.toml")
REFUSED = [
    Refused((*NODE, "--role", "leader"), "--role", "expected one of solo, primary, shadow"),
    Refused((*NODE, "--policy", "fastest"), "--policy", "unknown policy 'fastest'"),
    Refused((*NODE, "--member", "127.0.0.1"), "--member", "no port"),
    Refused((*NODE, "--role", "primary", "--peer", "nowhere"), "--peer", "has no port"),
    Refused((*NODE, "--peer", "127.0.0.1:7002"), "--peer", "a solo node has no peer"),
    Refused(("serve", "--role", "primary", "--member", "127.0.0.1:5070"), "replication.peer", "or give --peer"),
    Refused(("stats", "absent.json"), "absent.json", "cannot read status file"),
    Refused(("stats", "node.toml"), "node.toml", "cannot read status file"),
    Refused(("lab", "loopback", "--calls", "0"), "--calls", "must be positive"),
    Refused(("lab", "loopback", "--calls", "many"), "--calls", "invalid int value", one_line=False),
    Refused(("lab", "loopback", "--rate", "0"), "--rate", "must be positive"),
    Refused(("lab", "loopback", "--policy", "fastest"), "--policy", "unknown policy 'fastest'"),
    Refused(("lab", "up", "--mode", "warm"), "--mode", "invalid choice", one_line=False),
    Refused(("lab", "up", "--topology", "absent.toml"), "--topology", "No such file"),
    Refused(("lab", "up", "--topology", "bed.toml"), "--topology", "unknown test bed keys",
            files=(("bed.toml", "member_cont = 3\n"),)),
    Refused(("lab", "up", "--topology", "bed.toml"), "--topology", "outside",
            files=(("bed.toml", 'vip = "10.0.0.1"\n'),)),
    Refused(("lab", "experiment", "--rates", "20,0"), "--rates", "must be positive"),
    Refused(("lab", "experiment", "--parallel", "0"), "--parallel", "must be positive"),
    Refused(("lab", "experiment", "--call-duration", "0"), "--call-duration", "must be positive"),
    Refused(("lab", "experiment", "--fail-at", "-1"), "--fail-at", "must be >= 0"),
    Refused(("lab", "experiment", "--after-failure", "0"), "--after-failure", "must be positive"),
    Refused(("lab", "experiment", "--members", "pbx"), "--members", "invalid choice", one_line=False),
    Refused(("lab", "experiment", "--fault", "reboot"), "--fault", "invalid choice", one_line=False),
    Refused(("lab", "experiment", "--transport", "tcp,sctp"), "--transport", "expected udp, tcp or tcp1"),
    Refused(("lab", "fail", "primary", "--how", "nuke"), "--how", "invalid choice", one_line=False),
    Refused(("lab", "fail", "primary"), "--how", "required", one_line=False),
    Refused(("lab", "fail", "shadow", "--how", "kill"), "host", "invalid choice", one_line=False),
]  # fmt: skip


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch, lab_sandbox: None) -> None:
    """Anything past validation fails the test instead of serving, placing calls or touching the kernel."""

    def forbidden(*args: object, **kwargs: object) -> int:
        raise AssertionError("a refused value got past validation")

    for target in ("sipshadow.runtime.serve.run", LOOPBACK, EXPERIMENT, FAIL, DOWN, "sipshadow.lab.lab_cli.NetnsLab"):
        module_name, name = target.rsplit(".", 1)
        monkeypatch.setattr(importlib.import_module(module_name), name, forbidden)


@pytest.mark.parametrize("row", REFUSED, ids=lambda row: " ".join(row.argv))
@pytest.mark.usefixtures("no_work")
def test_a_bad_value_exits_2_with_a_line_naming_the_flag(capsys: pytest.CaptureFixture[str], row: Refused) -> None:
    Path("node.toml").write_text("\n".join(BASE) + "\n")
    for name, text in row.files:
        Path(name).write_text(text)
    assert run(list(row.argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert row.names in lines[-1] and row.says in lines[-1], lines
    assert lines[-1].startswith("sipshadow")
    if row.one_line:
        assert len(lines) == 1, lines


# -- serve end to end: a real node, an OPTIONS ping, its status file ------------------------


def wait_for(probe: Callable[[], object], timeout_s: float = 5.0) -> Any:
    """The probe's first truthy value (OSError/ValueError, and AttributeError on a section not
    written yet, count as not yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError, AttributeError):
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def loopback() -> tuple[str, int]:
    return ("127.0.0.1", free_port())


def test_serve_listens_where_told_and_writes_the_status_file_it_was_given(tmp_path: Path) -> None:
    """AlgProcess runs `python -m sipshadow.cli serve --config --listen --policy --status-file --member…`."""
    listen, members = loopback(), [loopback(), loopback()]
    with AlgProcess(listen, members, tmp_path, policy="least-active-calls",
                    config_text="[status]\ninterval_s = 0.1\n") as alg:  # fmt: skip
        assert options_ping(listen)
        status = wait_for(alg.status)  # read from the path given as --status-file
        assert status.ha is None and '"ha"' not in alg.status_file.read_text()  # solo: no --role, none in the file
        assert (status.service, status.policy) == (f"{listen[0]}:{listen[1]}", "least-active-calls")
        assert [m.address for m in status.members] == [f"{host}:{port}" for host, port in members]
        assert alg.stop() == 0


def test_role_and_peer_flags_pair_two_nodes_over_what_their_files_say(tmp_path: Path) -> None:
    """Node a's file says solo, node b's says primary with a wrong peer: only the flags make them a pair."""
    service, members = loopback(), [loopback()]
    a, b, nobody = free_port(), free_port(), free_port()
    key = secrets.token_hex(16)
    common = f'[status]\ninterval_s = 0.1\n[replication]\nkey = "{key}"\nheartbeat_interval_ms = 20\n'
    primary = AlgProcess(service, members, tmp_path / "a", config_text=f'{common}listen = "127.0.0.1:{a}"\n',
                         extra_args=["--role", "primary", "--peer", f"127.0.0.1:{b}"])  # fmt: skip
    shadow = AlgProcess(
        service, members, tmp_path / "b", ready="shadow",
        config_text=f'{common}listen = "127.0.0.1:{b}"\nrole = "primary"\npeer = "127.0.0.1:{nobody}"\n',
        extra_args=["--role", "shadow", "--peer", f"127.0.0.1:{a}"],
    )  # fmt: skip
    with primary:
        assert options_ping(service)
        assert wait_for(lambda: primary.status().ha.role) == "primary"
        with shadow:  # ready: in sync with the primary it was pointed at by --peer
            assert shadow.status().ha.role == "shadow"
            assert wait_for(lambda: primary.status().replication.shadow_attached)
