"""`sipshadow serve`: run one node until SIGTERM or SIGINT, then stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal

from sipshadow.core import Gateway
from sipshadow.determinism import SystemEntropy
from sipshadow.runtime.config import NodeConfig
from sipshadow.runtime.node import Node

log = logging.getLogger("sipshadow.serve")


async def serve(config: NodeConfig, shutdown: asyncio.Event | None = None) -> int:
    """Serve until `shutdown` is set (tests) or a SIGTERM/SIGINT arrives; returns an exit code."""
    loop = asyncio.get_running_loop()
    stop = shutdown or asyncio.Event()
    gateway = Gateway(config.gateway, SystemEntropy())
    node = Node(gateway, config.status_file, config.status_interval_s)
    try:
        await node.start(config.listen)
    except OSError as error:
        log.error("cannot bind %s:%d: %s", *config.listen, error.strerror)
        return 1
    handled = (signal.SIGTERM, signal.SIGINT)
    for signum in handled:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("status %s", json.dumps(node.status())))
    status_task = asyncio.create_task(node.publish_status())
    try:
        await stop.wait()
    finally:
        status_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await status_task
        for signum in (*handled, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        node.close()
        log.info("stopped; final status %s", json.dumps(node.status()))
    return 0


def run(config: NodeConfig) -> int:
    """Run `serve` on uvloop when it is installed (it is a pinned dependency)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for odd platforms
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))
