"""`serve`'s log lines: JSON objects a collector can parse, or the text format as it always was;
and the Call-ID of a message the core could not handle, for the line that reports it."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipshadow.runtime.logformat import CALL_ID_MAX_CHARS, CALL_ID_SCAN_BYTES, call_id_of, configure_logging

log = logging.getLogger("sipshadow.test")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where `configure_logging` writes; the root logger is put back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield io.StringIO()
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_json_line_has_the_fixed_fields(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream)
    log.info("dialog %s confirmed", "d-1")
    (line,) = json_lines(stream)
    assert list(line) == ["ts", "level", "logger", "message", "pid"]
    assert line["level"] == "INFO" and line["logger"] == "sipshadow.test" and line["message"] == "dialog d-1 confirmed"
    assert line["pid"] == os.getpid()
    ts = str(line["ts"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts), ts
    assert abs(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() - time.time()) < 5


def test_a_json_line_names_the_call_when_the_record_does(stream: io.StringIO) -> None:
    configure_logging("debug", "json", stream)
    log.warning("no member for %s", "INVITE", extra={"call_id": "a84b4c76e66710@pc33.example.com"})
    log.debug("no call here")
    with_call, without = json_lines(stream)
    assert with_call["call_id"] == "a84b4c76e66710@pc33.example.com" and with_call["level"] == "WARNING"
    assert "call_id" not in without and without["level"] == "DEBUG"


def test_a_traceback_is_one_string_field_and_the_line_stays_one_line(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream)
    members: dict[str, str] = {}
    try:
        members["missing"]
    except KeyError:
        log.exception("core choked on a message\nfrom 192.0.2.1", extra={"call_id": "c1"})
    assert stream.getvalue().count("\n") == 1
    (line,) = json_lines(stream)
    assert line["message"] == "core choked on a message\nfrom 192.0.2.1" and line["call_id"] == "c1"
    traceback = line["exc_info"]
    assert isinstance(traceback, str)
    assert traceback.startswith("Traceback (most recent call last):") and "KeyError: 'missing'" in traceback


def test_records_below_the_level_are_dropped(stream: io.StringIO) -> None:
    configure_logging("WARNING", "json", stream)
    log.info("quiet")
    log.error("loud")
    assert [line["message"] for line in json_lines(stream)] == ["loud"]


def test_text_mode_is_the_format_serve_always_wrote(stream: io.StringIO) -> None:
    configure_logging("info", "text", stream)
    log.info("listening on %s", "192.0.2.10:5060", extra={"call_id": "ignored in text"})
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r" INFO sipshadow\.test: listening on 192\.0\.2\.10:5060\n", stream.getvalue())
    record = logging.LogRecord("sipshadow.x", logging.ERROR, __file__, 1, "boom %d", (7,), None)
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
    assert handler.format(record) == logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(stream: io.StringIO) -> None:
    configure_logging("info", "text", stream)
    configure_logging("info", "json", stream)
    log.info("once")
    assert [line["message"] for line in json_lines(stream)] == ["once"]


def test_an_unknown_format_or_level_is_refused(stream: io.StringIO) -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", stream)
    with pytest.raises(ValueError):
        configure_logging("chatty", "text", stream)


INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Call-Info: <http://wwww.example.com/alice/photo.jpg>;purpose=icon\r\n"
    b"CALL-ID :  a84b4c76e66710@pc33.atlanta.example.com \r\n"
    b"Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("data", "call_id"),
    [
        (INVITE, "a84b4c76e66710@pc33.atlanta.example.com"),
        (b"SIP/2.0 200 OK\r\ni:x1@h\r\n\r\n", "x1@h"),  # compact form, a response
        (b"\r\n\r\nBYE sip:a SIP/2.0\r\nI: k@h\r\n\r\n", "k@h"),  # keep-alive CRLFs first
        (b"BYE sip:a SIP/2.0\nCall-ID: lf-only\n\n", "lf-only"),  # bare LF line ends
        (b"BYE sip:a SIP/2.0\r\nVia: x;i: no\r\n\r\nCall-ID: in-the-body\r\n", None),
        (b"BYE sip:a SIP/2.0\r\nCall-ID:\r\n\r\n", None),
        (b"BYE sip:a SIP/2.0\r\nCall-ID: caf\xc3\xa9\xff\r\n", "caf\u00e9\ufffd"),
        (b"", None),
        (b"\x00\xff" * 100, None),
        (b"OPTIONS sip:a SIP/2.0\r\nX-Pad: " + b"a" * CALL_ID_SCAN_BYTES + b"\r\nCall-ID: too-deep\r\n\r\n", None),
    ],
)
def test_call_id_of_raw_bytes(data: bytes, call_id: str | None) -> None:
    assert call_id_of(data) == call_id


def test_call_id_of_bounds_the_value_and_takes_any_buffer() -> None:
    long = b"BYE sip:a SIP/2.0\r\nCall-ID: " + b"z" * 1000 + b"\r\n\r\n"
    assert call_id_of(long) == "z" * CALL_ID_MAX_CHARS
    assert call_id_of(bytearray(INVITE)) == call_id_of(memoryview(INVITE)) == call_id_of(INVITE)


@given(st.binary(max_size=600))
def test_call_id_of_never_raises(data: bytes) -> None:
    found = call_id_of(data)
    assert found is None or (0 < len(found) <= CALL_ID_MAX_CHARS and "\n" not in found)
