"""How `serve` writes its log: today's text lines, or one JSON object a line for a collector
(journald's JSON export, Loki, Elasticsearch) that should not have to parse free text.

A JSON line carries `ts` (ISO 8601, UTC, milliseconds), `level`, `logger`, `message`, `pid`,
`call_id` when the call site names the call (`log.info(..., extra={"call_id": cid})`), and
`exc_info` (the formatted traceback, one string) when there is one. Any other `extra=` field is
kept as its own key: that is what a structured line is for.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

#: The text format `serve` has always written.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

#: How far into a message `call_id_of` looks (bytes): SIP headers sit at the head, and a log
#: line about a message that could not be parsed must not cost a scan of a 64 KiB body.
CALL_ID_SCAN_BYTES = 4096
#: The longest Call-ID `call_id_of` returns, so one hostile message cannot flood a log line.
CALL_ID_MAX_CHARS = 256

_CALL_ID_HEADER = re.compile(rb"(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class JsonLines(JsonFormatter):
    """One JSON object per record; fixed keys first, then `extra=` fields, then the traceback."""

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        utc = datetime.fromtimestamp(record.created, UTC).replace(tzinfo=None)
        log_data["ts"] = utc.isoformat(timespec="milliseconds") + "Z"
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["pid"] = record.process
        super().add_fields(log_data, record, message_dict)


class _ServeHandler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` installs, told apart from anyone else's."""


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for `fmt` ("text" or "json"); ValueError for anything else."""
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    if fmt == "json":
        return JsonLines()
    raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Log records of `level` and above to `stream` (stderr: the journal) in `fmt`.

    Like `logging.basicConfig`, but it also applies when the root logger already has handlers
    (a test runner's), and calling it again replaces the handler it installed before rather than
    adding a second one. Raises ValueError for an unknown level or format."""
    chosen = formatter(fmt)
    root = logging.getLogger()
    root.setLevel(level.upper())
    for installed in list(root.handlers):
        if isinstance(installed, _ServeHandler):
            root.removeHandler(installed)
            installed.close()
    handler = _ServeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(chosen)
    root.addHandler(handler)


def call_id_of(data: bytes | bytearray | memoryview) -> str | None:
    """The Call-ID (or compact `i:`) header value of raw SIP bytes, for a log line about a message
    the core could not handle: looks at the head only (`CALL_ID_SCAN_BYTES`, up to the blank line
    ending the headers), decodes leniently, never raises; None when there is none."""
    try:
        started = False
        for raw in bytes(data[:CALL_ID_SCAN_BYTES]).split(b"\n"):
            line = raw.rstrip(b"\r")
            if not line:
                if started:  # the end of the headers (blank lines before a message are keep-alives)
                    return None
                continue
            started = True
            found = _CALL_ID_HEADER.fullmatch(line)
            if found:
                value = found.group(1).strip().decode("utf-8", "replace")
                return value[:CALL_ID_MAX_CHARS] or None
    except (TypeError, ValueError):
        return None
    return None
