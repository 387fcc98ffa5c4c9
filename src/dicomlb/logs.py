"""Logging setup: one event per line, `event key=value ...` or JSON."""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from typing import Any

# `key=value` after the event name; a value is a word or a Python repr string (`%r`).
_FIELD = re.compile(r"""\s+([A-Za-z_][\w.]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
_INT = re.compile(r"-?\d{1,18}")
_RESERVED = frozenset({"time", "level", "logger", "event", "message"})


def event_fields(message: str) -> tuple[str, dict[str, Any]]:
    """The event name and its `key=value` fields (numbers as ints, `%r` strings unquoted).

    A line that is not `event key=value ...` throughout gives no fields."""
    name, space, rest = message.partition(" ")
    fields: dict[str, Any] = {}
    position = 0
    rest = space + rest
    while position < len(rest):
        match = _FIELD.match(rest, position)
        if match is None:
            return name, {}
        key, raw = match.group(1), match.group(2)
        value: Any = raw
        if raw[:1] in ("'", '"'):
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        elif _INT.fullmatch(raw):
            value = int(raw)
        fields[key] = value
        position = match.end()
    return name, fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, the event name, its `key=value` fields
    as members (`http.request` → route, pool, backend, status, ms, ...) and the whole line
    as `message`."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, fields = event_fields(message)
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        for key, value in fields.items():
            if key not in _RESERVED:
                line[key] = value
        line["message"] = message
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


class PlainFormatter(logging.Formatter):
    """`time level event`; the time text is reused within a second (one line per image at
    thousands of images per second: localtime + strftime were a third of a record's cost)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = super().formatTime(record, datefmt)
            self._second = second
        return self._text


def setup(level: str = "info", fmt: str = "plain") -> None:
    """Configure the root logger for the command line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    # One event per line at thousands of images per second: skip the caller lookup and the
    # thread/process fields nobody formats (logging docs, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
