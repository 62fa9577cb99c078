"""The `sipshadow` command line: `serve` a node, read its `stats`, run the `lab`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sipshadow import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipshadow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sipshadow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ALG")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="service address (overrides service.listen)")
    serve.add_argument(
        "--member", action="append", metavar="HOST:PORT", help="cluster member (repeatable; replaces cluster.members)"
    )
    serve.add_argument("--policy", help="round-robin | least-active-calls | weighted-random | call-id-hash")
    serve.add_argument("--status-file", metavar="PATH", help="write counters here as JSON every status.interval_s")
    serve.add_argument("--role", help="solo | primary | shadow (overrides replication.role)")
    serve.add_argument("--peer", metavar="HOST:PORT", help="the other node's replication address (replication.peer)")

    stats = commands.add_parser("stats", help="print a running node's status file")
    stats.add_argument("file", type=Path)
    stats.add_argument("--json", action="store_true", help="raw JSON instead of a table")

    lab = commands.add_parser("lab", help="experiments with real SIPp")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    loopback = lab_commands.add_parser("loopback", help="SIPp UAC -> sipshadow -> 2 SIPp UAS on loopback")
    loopback.add_argument("--calls", type=int, default=400)
    loopback.add_argument("--rate", type=float, default=40.0)
    loopback.add_argument("--policy", default="round-robin")
    loopback.add_argument("--out", type=Path, default=Path("runs/loopback"))
    up = lab_commands.add_parser("up", help="bring up the namespace test bed with a primary/shadow pair")
    up.add_argument("--topology", type=Path, help="TOML file: member_count, addresses (198.18.0.0/24)")
    up.add_argument("--mode", default="active", choices=("active", "network", "none"))
    up.add_argument("--out", type=Path, default=Path("runs/lab"))
    lab_commands.add_parser("down", help="remove the test bed: namespaces, links, processes")
    experiment = lab_commands.add_parser("experiment", help="the paper's Figure 2: loss ratio vs call rate per HA mode")
    experiment.add_argument("--modes", default="none,network,active")
    experiment.add_argument("--rates", default="20,50,100,200", help="calls per second, comma separated")
    experiment.add_argument("--call-duration", type=float, default=4.0, metavar="S")
    experiment.add_argument("--fail-at", type=float, default=3.0, metavar="S")
    experiment.add_argument("--repeat", type=int, default=3)
    experiment.add_argument("--members", default="sipp", choices=("sipp", "kamailio"))
    experiment.add_argument("--fault", default="crash", choices=("crash", "kill"), help="how the primary fails")
    experiment.add_argument("--parallel", type=int, default=4, help="test beds run at once")
    experiment.add_argument("--no-cost", action="store_true", help="skip the failure-free cost measurement")
    experiment.add_argument("--out", type=Path, default=Path("runs/experiment"))
    fail = lab_commands.add_parser("fail", help="inject a fault into the primary")
    fail.add_argument("host", choices=("primary",))
    fail.add_argument("--how", required=True, choices=("kill", "crash", "partition"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "stats":
        return _stats(args)
    return _lab(args)


def _lab(args: argparse.Namespace) -> int:
    if args.lab_command == "loopback":
        from sipshadow.lab.loopback import run_loopback

        return run_loopback(calls=args.calls, rate=args.rate, policy=args.policy, out=args.out)
    from sipshadow.lab import lab_cli

    if args.lab_command == "experiment":
        return _experiment(args)
    if args.lab_command == "up":
        return lab_cli.lab_up(args.topology, args.mode, args.out.resolve())
    if args.lab_command == "down":
        return lab_cli.lab_down()
    return lab_cli.lab_fail(args.host, args.how)


def _experiment(args: argparse.Namespace) -> int:
    from sipshadow.lab.experiment import MODES, ExperimentConfig, run_experiment

    try:
        modes = tuple(mode for mode in args.modes.split(",") if mode)
        rates = tuple(int(rate) for rate in args.rates.split(",") if rate)
    except ValueError:
        print("sipshadow: --rates: expected comma-separated integers", file=sys.stderr)
        return 2
    if not modes or any(mode not in MODES for mode in modes):
        print(f"sipshadow: --modes: expected a comma-separated subset of {','.join(MODES)}", file=sys.stderr)
        return 2
    if not rates or min(rates) <= 0 or args.repeat < 1 or args.parallel < 1:
        print("sipshadow: --rates, --repeat and --parallel must be positive", file=sys.stderr)
        return 2
    _interrupt_on(signal.SIGINT, signal.SIGTERM)  # even when started as a background job (SIGINT ignored)
    config = ExperimentConfig(
        modes=modes, rates=rates, call_duration_s=args.call_duration, fail_at_s=args.fail_at, repeat=args.repeat,
        members=args.members, parallel=args.parallel, fault=args.fault, out=args.out.resolve(),
    )  # fmt: skip
    return run_experiment(config, measure_cost=not args.no_cost)


def _interrupt_on(*signums: signal.Signals) -> None:
    """Turn these signals into KeyboardInterrupt, so every test bed is torn down on the way out."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in signums:
        signal.signal(signum, interrupt)


def _serve(args: argparse.Namespace) -> int:
    from sipshadow.runtime.config import ConfigError, ConfigFile, build, load_file
    from sipshadow.runtime.serve import run

    try:
        file = load_file(args.config) if args.config else ConfigFile()
        config = build(file, listen=args.listen, members=args.member, policy=args.policy, status_file=args.status_file)
    except ConfigError as error:
        print(f"sipshadow: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(config)


def _stats(args: argparse.Namespace) -> int:
    try:
        document = json.loads(args.file.read_text())
    except (OSError, ValueError) as error:
        print(f"sipshadow: cannot read status file {args.file}: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    from sipshadow.runtime.stats_view import render

    render(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
