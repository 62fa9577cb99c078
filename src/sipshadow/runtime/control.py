"""The control socket: the operator's commands (`sipshadow ctl`) over a UNIX stream socket.

Kamailio has its ctl socket and kamcmd, keepalived its signals; sipshadow has this. One JSON
object per line each way: a request `{"command": NAME, ...arguments}`, an answer `{"ok": true,
"result": ...}` or `{"ok": false, "error": "one line"}`. Several requests may follow on one
connection. The socket file is made mode 0660: whoever can open it can drain members and hand
the service over, so its directory must be private (systemd's `RuntimeDirectory`).

Commands run on the node's event loop, one at a time per connection; a command's error is an
answer, never a crash of the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("sipshadow.control")

#: A request line longer than this (bytes) closes the connection: commands are short.
MAX_REQUEST_BYTES = 64 * 1024
Command = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandError(Exception):
    """A command that cannot be done; the message is the one line the operator reads."""


class ControlServer:
    """Serves `commands` (name -> coroutine taking the request's arguments) at `path`."""

    def __init__(self, path: Path, commands: Mapping[str, Command]) -> None:
        self.path = path
        self.commands = dict(commands)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen at `path` (a stale socket file from a dead node is replaced; any other file
        there is an error). Raises OSError when the socket cannot be made."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise OSError(f"control.socket {self.path} exists and is not a socket")
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        previous = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(previous)
        log.info("control socket at %s", self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line), separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (ValueError, ConnectionError) as error:  # an over-long line, a peer gone
            log.debug("control connection closed: %s", error)
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not a JSON object"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'expected {"command": NAME, ...}'}
        name = request.pop("command")
        command = self.commands.get(name)
        if command is None:
            return {"ok": False, "error": f"unknown command {name!r}; known: {', '.join(sorted(self.commands))}"}
        try:
            return {"ok": True, "result": await command(request)}
        except CommandError as error:
            return {"ok": False, "error": str(error)}
        except Exception as error:  # a bug in a command: say so, keep serving
            log.exception("control command %s failed", name)
            return {"ok": False, "error": f"{name} failed: {error}"}

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                self.path.unlink()

