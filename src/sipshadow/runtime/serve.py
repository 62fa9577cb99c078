"""`sipshadow serve`: run one node (solo, or one of a primary/shadow pair) until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from sipshadow import _native
from sipshadow.core import Gateway
from sipshadow.determinism import SystemEntropy
from sipshadow.records.writer import open_writer
from sipshadow.runtime.config import NodeConfig
from sipshadow.runtime.control import CommandError, ControlServer
from sipshadow.runtime.ha import HandoffRefused, HaNode
from sipshadow.runtime.metrics import Metrics
from sipshadow.runtime.node import Node
from sipshadow.runtime.operator import Operator
from sipshadow.runtime.status import StatusDocument, write_atomically
from sipshadow.runtime.systemd import Notifier

log = logging.getLogger("sipshadow.serve")

Status = Callable[[], StatusDocument]


async def serve(
    config: NodeConfig, shutdown: asyncio.Event | None = None, load_config: Callable[[], NodeConfig] | None = None
) -> int:
    """Serve until `shutdown` is set (tests) or a SIGTERM/SIGINT arrives; returns an exit code.

    SIGTERM on a primary with a synced shadow hands the service over first (`HaNode.hand_off`):
    a restart or an upgrade loses no call. `load_config` reads the config file again for
    `ctl reload` (and SIGHUP). With `control.socket`, `metrics.listen` and a systemd
    `NOTIFY_SOCKET`, the node serves `sipshadow ctl`, Prometheus and systemd's readiness and
    watchdog protocol."""
    loop = asyncio.get_running_loop()
    stop = shutdown or asyncio.Event()
    notifier = Notifier.from_environment()
    try:
        running = await _start(config)
    except OSError as error:
        log.error("cannot start: %s", error)
        notifier.close()
        return 1
    extras: list[Callable[[], None]] = []
    try:
        operator = Operator(
            config, running.status, node=running.node, ha=running.ha, load_config=load_config,
            reloading=lambda started: notifier.reloading() if started else notifier.reloaded(),
        )  # fmt: skip
        extras += await _operate(config, running, operator)
    except OSError as error:
        log.error("cannot start: %s", error)
        for close_extra in extras:
            close_extra()
        await running.close()
        notifier.close()
        return 1
    leaving: list[asyncio.Task[None]] = []

    def terminate() -> None:
        if not leaving:
            leaving.append(loop.create_task(_leave(running.ha, stop)))

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("status %s", _as_json(running.status())))
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_on_signal(operator)))
    publisher = asyncio.create_task(_publish(running.status, config.status_file, config.status_interval_s))
    log.info("core: %s", _native.STATE if _native.STATE != "compiled" else
             f"compiled (mypyc, {len(_native.compiled_modules())} modules)")  # fmt: skip
    notifier.ready(f"serving as {running.ha.role if running.ha is not None else 'solo'}")
    notifier.start_watchdog()
    try:
        await stop.wait()
    finally:
        notifier.stopping("stopping")
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        for close_extra in extras:
            close_extra()
        await running.close()
        final = running.status()
        _write(config.status_file, final)
        log.info("stopped; final status %s", _as_json(final))
        notifier.close()
    return 0


class Running:
    """A started node: solo (`node`) or one of a pair (`ha`), its status and its closer."""

    def __init__(self, status: Status, close: Callable[[], Awaitable[None]], *, node: Node | None = None,
                 ha: HaNode | None = None) -> None:  # fmt: skip
        self.status = status
        self.close = close
        self.node = node
        self.ha = ha


async def _start(config: NodeConfig) -> Running:
    """Start a solo node or an HA node (and its call records' writer, when `[cdr]` is on)."""
    cdr = config.records
    records = open_writer(cdr.store, cdr.journal, fsync=cdr.fsync) if cdr is not None else None
    if records is not None:
        records.start()
    try:
        if config.replication is None:
            node = Node(Gateway(config.gateway, SystemEntropy()), config.tcp, records)
            await node.start(config.listen)
            close: Callable[[], Awaitable[None]] = _async(node.close)
            status: Status = node.status
        else:
            ha = HaNode(config, records)
            await ha.start()
            close, status = ha.close, ha.status
    except BaseException:
        if records is not None:
            await asyncio.to_thread(records.stop)
        raise

    async def close_all() -> None:
        await close()
        if records is not None:  # what the store has not taken stays in the journal for the next start
            await asyncio.to_thread(records.stop)

    if config.replication is None:
        return Running(status, close_all, node=node)
    return Running(status, close_all, ha=ha)


def _async(close: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def closer() -> None:
        close()

    return closer


async def _operate(config: NodeConfig, running: Running, operator: Operator) -> list[Callable[[], None]]:
    """The control socket and the metrics endpoint, when configured; their closers."""
    closers: list[Callable[[], None]] = []
    if config.metrics_listen is not None:
        metrics = Metrics(running.status)
        await metrics.start(config.metrics_listen)
        closers.append(metrics.close)
        if running.ha is not None:
            running.ha.on_takeover = metrics.observe_takeover
            running.ha.on_commit_delay = metrics.observe_commit_delay
            running.ha.on_heartbeat_rtt = metrics.observe_heartbeat_rtt
            if running.ha.serving is not None:  # started as primary before the hook was set
                running.ha.serving.link.on_commit_delay = metrics.observe_commit_delay
        log.info("metrics at http://%s:%d/metrics", *metrics.address)
    if config.control_socket is not None:
        control = ControlServer(config.control_socket, operator.commands())
        await control.start()
        closers.append(control.close)
    return closers


async def _leave(ha: HaNode | None, stop: asyncio.Event) -> None:
    """SIGTERM: a primary with a synced shadow hands over first; then stop."""
    try:
        if ha is not None and ha.role == "primary":
            try:
                log.warning("SIGTERM: %s", await ha.hand_off(leaving=True))
            except HandoffRefused as error:
                log.warning("SIGTERM: no handoff (%s): stopping", error)
    finally:
        stop.set()


async def _reload_on_signal(operator: Operator) -> None:
    try:
        log.warning("SIGHUP: %s", await operator.commands()["reload"]({}))
    except CommandError as error:
        log.error("SIGHUP: %s", error)


async def _publish(status: Status, path: Path | None, interval_s: float) -> None:
    while path is not None:
        _write(path, status())
        await asyncio.sleep(interval_s)


def _as_json(document: StatusDocument) -> str:
    """One line for the log (`json.dumps` spacing, as the file's readers know it)."""
    return json.dumps(msgspec.to_builtins(document))


def _write(path: Path | None, document: StatusDocument) -> None:
    if path is None:
        return
    try:
        write_atomically(path, document)
    except OSError as error:
        log.warning("cannot write status file %s: %s", path, error)


def run(config: NodeConfig, load_config: Callable[[], NodeConfig] | None = None) -> int:
    """Run `serve` on uvloop when it is installed (it is a pinned dependency)."""
    _raise_file_limit(config)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for odd platforms
        return asyncio.run(serve(config, load_config=load_config))
    return uvloop.run(serve(config, load_config=load_config))


def _raise_file_limit(config: NodeConfig) -> None:
    """Every TCP connection is a descriptor: take the hard limit, and say if it is below the
    connections allowed (`tcp.connections`), which then cannot all be accepted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    wanted = config.tcp.connections + 256  # sockets, files and the replication links besides
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open files limited to %d (RLIMIT_NOFILE): fewer than tcp.connections = %d can be open; "
                    "raise LimitNOFILE or lower tcp.connections", soft, config.tcp.connections)  # fmt: skip
