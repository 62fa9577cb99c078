"""The `sipshadow` command line: `serve` a node, read its `stats`, its call records (`cdr`), run the `lab`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sipshadow import __version__
from sipshadow.runtime.ctl import add_ctl_parser, ctl_main

if TYPE_CHECKING:
    from sipshadow.runtime.config import NodeConfig


def _parser() -> argparse.ArgumentParser:
    from sipshadow.core.config import POLICIES  # here, not at the top: `ctl` starts without the core
    from sipshadow.runtime.config import HA_MODES

    parser = argparse.ArgumentParser(prog="sipshadow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sipshadow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ALG")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="service address (overrides service.listen)")
    serve.add_argument(
        "--member", action="append", metavar="HOST:PORT", help="cluster member (repeatable; replaces cluster.members)"
    )
    serve.add_argument("--policy", help=" | ".join(POLICIES))
    serve.add_argument("--status-file", metavar="PATH", help="write counters here as JSON every status.interval_s")
    serve.add_argument("--role", help="solo | primary | shadow (overrides replication.role)")
    serve.add_argument("--peer", metavar="HOST:PORT", help="the other node's replication address (replication.peer)")

    stats = commands.add_parser("stats", help="print a running node's status file")
    stats.add_argument("file", type=Path, help="the node's status.file (--status-file)")
    stats.add_argument("--json", action="store_true", help="raw JSON instead of a table")

    add_ctl_parser(commands)

    cdr = commands.add_parser("cdr", help="call records: export them, flush a stopped node's journal")
    cdr_commands = cdr.add_subparsers(dest="cdr_command", required=True)
    export = cdr_commands.add_parser("export", help="records to stdout, by the time of their INVITE")
    flush = cdr_commands.add_parser("flush", help="a stopped node's journal into its store")
    for sub in (export, flush):
        sub.add_argument("--config", type=Path, help="the node's TOML config: its [cdr] store and journal")
        sub.add_argument("--store", help="a SQLite file or a postgresql:// URL (instead of --config)")
    export.add_argument("--since", help="UTC, ISO 8601 (2026-11-30T06:00:00Z) or epoch seconds; inclusive")
    export.add_argument("--until", help="UTC, as --since; exclusive")
    export.add_argument("--format", default="csv", choices=("csv", "json"), help="csv (a header line) or json")
    flush.add_argument("--journal", type=Path, help="the journal file (instead of --config)")

    lab = commands.add_parser("lab", help="experiments with real SIPp")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    loopback = lab_commands.add_parser("loopback", help="SIPp UAC -> sipshadow -> 2 SIPp UAS on loopback")
    loopback.add_argument("--calls", type=int, default=400, help="calls SIPp places")
    loopback.add_argument("--rate", type=float, default=40.0, help="calls per second")
    loopback.add_argument("--policy", default="round-robin", help="the ALG's cluster.policy")
    loopback.add_argument("--out", type=Path, default=Path("runs/loopback"), help="SIPp and ALG logs")
    up = lab_commands.add_parser("up", help="bring up the namespace test bed with a primary/shadow pair")
    up.add_argument("--topology", type=Path, help="TOML file: member_count, addresses (198.18.0.0/24)")
    up.add_argument("--mode", default="active", choices=HA_MODES, help="the pair's HA mode")
    up.add_argument("--out", type=Path, default=Path("runs/lab"), help="node logs and status files")
    lab_commands.add_parser("down", help="remove the test bed: namespaces, links, processes")
    experiment = lab_commands.add_parser("experiment", help="the paper's Figure 2: loss ratio vs call rate per HA mode")
    experiment.add_argument("--modes", default="none,network,active", help="HA modes, comma separated")
    experiment.add_argument("--rates", default="20,50,100,200", help="calls per second, comma separated")
    experiment.add_argument("--call-duration", type=float, default=4.0, metavar="S", help="length of each call")
    experiment.add_argument("--fail-at", type=float, default=3.0, metavar="S", help="primary fails this long in")
    experiment.add_argument("--after-failure", type=float, default=19.0, metavar="S",
                            help="calls go on being offered this long after the failure")  # fmt: skip
    experiment.add_argument("--repeat", type=int, default=3, help="runs per (mode, rate)")
    experiment.add_argument(
        "--members", default="sipp", choices=("sipp", "kamailio"), help="kamailio: a proxy before each callee"
    )
    experiment.add_argument("--fault", default="crash", choices=("crash", "kill"), help="how the primary fails")
    experiment.add_argument("--transport", default="udp", metavar="T[,T]",
                            help="how the caller reaches the ALG, comma separated: udp, tcp (SIPp -t tn: a connection "
                                 "per call), tcp1 (-t t1: one connection for all)")  # fmt: skip
    experiment.add_argument("--records", default="sqlite", choices=("sqlite", "postgres", "off"),
                            help="where the nodes write call records (postgres: a real server the experiment runs)")
    experiment.add_argument("--parallel", type=int, default=4, help="test beds run at once")
    experiment.add_argument("--no-cost", action="store_true", help="skip the failure-free cost measurement")
    experiment.add_argument("--out", type=Path, default=Path("runs/experiment"), help="results, figure, report, logs")
    chaos = lab_commands.add_parser("chaos", help="fault after fault, each healed, under SIPp load (-nr)")
    chaos.add_argument("--minutes", type=float, default=10.0, help="how long SIPp places calls")
    chaos.add_argument("--rate", type=float, default=200.0, help="calls per second")
    chaos.add_argument("--seed", type=int, default=1, help="seeds the faults' order and spacing")
    chaos.add_argument("--out", type=Path, default=Path("runs/chaos"), help="timeline, summary, plot, logs")
    fuzz = lab_commands.add_parser("fuzz", help="mutated SIP from a second client while SIPp calls run (-nr)")
    fuzz.add_argument("--seconds", type=float, default=60.0, help="how long SIPp places calls and the fuzzer sends")
    fuzz.add_argument("--rate", type=float, default=100.0, help="real calls per second")
    fuzz.add_argument("--fuzz-rate", type=float, default=300.0, help="mutated datagrams per second")
    fuzz.add_argument("--seed", type=int, default=1, help="seeds the mutations (hypothesis)")
    fuzz.add_argument("--out", type=Path, default=Path("runs/fuzz"), help="summary, the fuzzer's report, logs")
    fail = lab_commands.add_parser("fail", help="inject a fault into the primary")
    fail.add_argument("host", choices=("primary",), help="the node to fail")
    fail.add_argument(
        "--how", required=True, choices=("kill", "crash", "partition"), help="SIGKILL, links down, heartbeat link cut"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["ctl"]:  # keepalived's notify hooks call it: start in tens of ms, not hundreds
        return ctl_main(words[1:])
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "stats":
        return _stats(args)
    if args.command == "cdr":
        return _cdr(args)
    return _lab(args)


def _cdr(args: argparse.Namespace) -> int:
    from sipshadow.records import export
    from sipshadow.records.store import StoreError
    from sipshadow.records.stores import open_store
    from sipshadow.runtime.config import ConfigError, load_file, records_config

    store, journal = args.store, getattr(args, "journal", None)
    if args.config is not None:
        try:
            records = records_config(load_file(args.config).cdr)
        except ConfigError as error:
            print(f"sipshadow: {error}", file=sys.stderr)
            return 2
        if records is None:
            return _refuse("--config", f"{args.config} has no [cdr] store")
        store, journal = store or records.store, journal or records.journal
    if not store:
        return _refuse("--store", "give --store or --config")
    try:
        since = export.parse_time(args.since) if getattr(args, "since", None) else None
        until = export.parse_time(args.until) if getattr(args, "until", None) else None
    except ValueError as error:
        return _refuse("--since/--until", str(error))
    try:
        target = open_store(store)
        if args.cdr_command == "export":
            try:
                export.export(target, sys.stdout, since=since, until=until, fmt=args.format)
                sys.stdout.flush()
            except BrokenPipeError:  # `| head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if journal is None:
            return _refuse("--journal", "give --journal or --config")
        written, duplicates, left = export.flush(target, journal)
    except (StoreError, ValueError, OSError) as error:
        print(f"sipshadow: cdr {args.cdr_command}: {error}", file=sys.stderr)
        return 1
    print(f"{written} records written, {duplicates} already there, {left} journal bytes left")
    return 0 if left == 0 else 1


def _lab(args: argparse.Namespace) -> int:
    import contextlib
    import faulthandler
    import io

    if sys.__stderr__ is not None:  # a crash in a C extension in the lab's threads says where, in each
        with contextlib.suppress(io.UnsupportedOperation, ValueError):
            faulthandler.enable(file=sys.__stderr__)
    if args.lab_command == "loopback":
        from sipshadow.core.config import POLICIES
        from sipshadow.lab.loopback import run_loopback

        if args.calls < 1:
            return _refuse("--calls", f"must be positive, got {args.calls}")
        if not args.rate > 0:
            return _refuse("--rate", f"must be positive, got {args.rate:g}")
        if args.policy not in POLICIES:
            return _refuse("--policy", f"unknown policy {args.policy!r}; expected one of {', '.join(POLICIES)}")
        # resolved: SIPp runs with its log directory as cwd, where a relative path means something else
        return run_loopback(calls=args.calls, rate=args.rate, policy=args.policy, out=args.out.resolve())
    from sipshadow.lab import lab_cli

    if args.lab_command == "experiment":
        return _experiment(args)
    if args.lab_command == "chaos":
        return _chaos(args)
    if args.lab_command == "fuzz":
        return _fuzz(args)
    if args.lab_command == "up":
        return lab_cli.lab_up(args.topology, args.mode, args.out.resolve())
    if args.lab_command == "down":
        return lab_cli.lab_down()
    return lab_cli.lab_fail(args.host, args.how)


def _experiment(args: argparse.Namespace) -> int:
    from sipshadow.lab.experiment import MODES, TRANSPORTS, ExperimentConfig, run_experiment

    modes = tuple(mode for mode in args.modes.split(",") if mode)
    try:
        rates = tuple(int(rate) for rate in args.rates.split(",") if rate)
    except ValueError:
        return _refuse("--rates", "expected comma-separated integers")
    if not modes or any(mode not in MODES for mode in modes):
        return _refuse("--modes", f"expected a comma-separated subset of {','.join(MODES)}")
    if not rates or min(rates) <= 0:
        return _refuse("--rates", "must be positive")
    positive = {"--repeat": args.repeat, "--parallel": args.parallel, "--call-duration": args.call_duration,
                "--after-failure": args.after_failure}  # fmt: skip
    for flag, value in positive.items():
        if not value > 0:
            return _refuse(flag, f"must be positive, got {value:g}")
    transports = tuple(dict.fromkeys(part.strip() for part in args.transport.split(",") if part.strip()))
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not transports:
        return _refuse("--transport", f"expected udp, tcp or tcp1 (comma separated), got {args.transport!r}")
    if args.fail_at < 0:
        return _refuse("--fail-at", f"must be >= 0, got {args.fail_at:g}")
    _interrupt_on(signal.SIGINT, signal.SIGTERM)  # even when started as a background job (SIGINT ignored)
    config = ExperimentConfig(
        modes=modes, rates=rates, call_duration_s=args.call_duration, fail_at_s=args.fail_at, repeat=args.repeat,
        after_failure_s=args.after_failure,
        members=args.members, parallel=args.parallel, fault=args.fault, out=args.out.resolve(), transports=transports,
        records=args.records,
    )  # fmt: skip
    return run_experiment(config, measure_cost=not args.no_cost)


def _chaos(args: argparse.Namespace) -> int:
    from sipshadow.lab.chaos import ChaosConfig, run_chaos

    for flag, value in {"--minutes": args.minutes, "--rate": args.rate}.items():
        if not value > 0:
            return _refuse(flag, f"must be positive, got {value:g}")
    _interrupt_on(signal.SIGINT, signal.SIGTERM)
    return run_chaos(ChaosConfig(minutes=args.minutes, rate=args.rate, seed=args.seed, out=args.out.resolve()))


def _fuzz(args: argparse.Namespace) -> int:
    from sipshadow.lab.live_fuzz import FuzzConfig, run_live_fuzz

    for flag, value in {"--seconds": args.seconds, "--rate": args.rate, "--fuzz-rate": args.fuzz_rate}.items():
        if not value > 0:
            return _refuse(flag, f"must be positive, got {value:g}")
    _interrupt_on(signal.SIGINT, signal.SIGTERM)
    return run_live_fuzz(FuzzConfig(seconds=args.seconds, rate=args.rate, fuzz_rate=args.fuzz_rate, seed=args.seed,
                                    out=args.out.resolve()))  # fmt: skip


def _refuse(flag: str, problem: str) -> int:
    """One line naming the flag, exit code 2: the same shape as a config error."""
    print(f"sipshadow: {flag}: {problem}", file=sys.stderr)
    return 2


def _interrupt_on(*signums: signal.Signals) -> None:
    """Turn these signals into KeyboardInterrupt, so every test bed is torn down on the way out."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in signums:
        signal.signal(signum, interrupt)


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The `serve` flags merged over the config file: what the node would run with (raises ConfigError)."""
    from sipshadow.runtime.config import ConfigError, ConfigFile, build, load_file

    file = load_file(args.config) if args.config else ConfigFile()
    config = build(file, listen=args.listen, members=args.member, policy=args.policy, status_file=args.status_file,
                   role=args.role, peer=args.peer)  # fmt: skip
    if args.peer is not None and config.replication is None:
        raise ConfigError("--peer", "a solo node has no peer; give --role primary|shadow (or replication.role)")
    return config


def _serve(args: argparse.Namespace) -> int:
    from sipshadow.runtime.config import ConfigError
    from sipshadow.runtime.logformat import configure_logging
    from sipshadow.runtime.serve import run

    try:
        config = node_config(args)
    except ConfigError as error:
        print(f"sipshadow: {error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    for warning in config.warnings:
        logging.getLogger("sipshadow.config").warning("%s", warning)
    return run(config, load_config=(lambda: node_config(args)) if args.config else None)


def _stats(args: argparse.Namespace) -> int:
    import msgspec

    from sipshadow.runtime.status import NotAStatusDocument, read_status

    try:
        document = read_status(args.file)
    except NotAStatusDocument as error:
        print(f"sipshadow: cannot read status file {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"sipshadow: cannot read status file {args.file}: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(msgspec.to_builtins(document), indent=2))
        return 0
    from sipshadow.runtime.stats_view import render

    render(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
