"""`sipshadow serve`: run one node (solo, or one of a primary/shadow pair) until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from sipshadow.core import Gateway
from sipshadow.determinism import SystemEntropy
from sipshadow.runtime.config import NodeConfig
from sipshadow.runtime.ha import HaNode
from sipshadow.runtime.node import Node
from sipshadow.runtime.status import StatusDocument, write_atomically

log = logging.getLogger("sipshadow.serve")

Status = Callable[[], StatusDocument]


async def serve(config: NodeConfig, shutdown: asyncio.Event | None = None) -> int:
    """Serve until `shutdown` is set (tests) or a SIGTERM/SIGINT arrives; returns an exit code."""
    loop = asyncio.get_running_loop()
    stop = shutdown or asyncio.Event()
    try:
        status, close = await _start(config)
    except OSError as error:
        log.error("cannot start: %s", error)
        return 1
    handled = (signal.SIGTERM, signal.SIGINT)
    for signum in handled:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("status %s", _as_json(status())))
    publisher = asyncio.create_task(_publish(status, config.status_file, config.status_interval_s))
    try:
        await stop.wait()
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        for signum in (*handled, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        await close()
        final = status()
        _write(config.status_file, final)
        log.info("stopped; final status %s", _as_json(final))
    return 0


async def _start(config: NodeConfig) -> tuple[Status, Callable[[], Any]]:
    """Start a solo node or an HA node; return its status function and its closer."""
    if config.replication is None:
        node = Node(Gateway(config.gateway, SystemEntropy()), config.tcp)
        await node.start(config.listen)

        async def close_solo() -> None:
            node.close()

        return node.status, close_solo
    ha = HaNode(config)
    await ha.start()
    return ha.status, ha.close


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


def run(config: NodeConfig) -> int:
    """Run `serve` on uvloop when it is installed (it is a pinned dependency)."""
    _raise_file_limit(config)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for odd platforms
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))


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
