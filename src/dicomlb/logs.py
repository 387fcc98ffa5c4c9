"""Logging setup: one event per line, `event key=value ...` or JSON.

Values come from peers (AE titles, paths, headers): the formatters make sure each record
stays one line and each `key=%s` one field, whatever those values hold (see `render`)."""

from __future__ import annotations

import ast
import functools
import json
import logging
import re
import sys
from typing import Any, TextIO

# `key=value` after the event name; a value is a word or a Python repr string (`%r`).
_FIELD = re.compile(r"""\s+([A-Za-z_][\w.]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
_INT = re.compile(r"-?\d{1,18}")
_RESERVED = frozenset({"time", "level", "logger", "event", "message"})


# printf conversions as `msg % args` reads them; `key=%s` is a field whose value is a word.
_CONVERSION = re.compile(r"%(\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_WORD = re.compile(r"[^\s'\"]*")
_ASCII_WORD = re.compile(r"[!#-&(-~]*")  # printable ASCII but space and quotes


@functools.lru_cache(maxsize=1024)
def _field_arguments(msg: str) -> tuple[int, ...]:
    """Positions of the arguments that `msg` formats as `key=%s`; none when it is formatted
    from a mapping or with `*` widths (then only the line is escaped)."""
    positions: list[int] = []
    index = 0
    for match in _CONVERSION.finditer(msg):
        name, width, precision, kind = match.groups()
        if name is not None or width == "*" or precision == "*":
            return ()
        if kind == "%":
            continue
        if kind == "s" and re.search(r"[\w.]=$", msg[: match.start()]):
            positions.append(index)
        index += 1
    return tuple(positions)


def _field_value(value: object) -> object:
    """`value` itself when it prints as one word, else its repr: quoted, with its quotes and
    control characters escaped (`event_fields` reads it back)."""
    text = value if isinstance(value, str) else str(value)
    if _ASCII_WORD.fullmatch(text) or (text.isprintable() and _WORD.fullmatch(text)):
        return value
    return repr(text)


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _escaped_lines(text: str) -> list[str]:
    return [part if part.isprintable() else _escaped(part) for part in text.split("\n")]


def render(record: logging.LogRecord) -> str:
    """The record's message as one line: a `key=%s` value that is not one word (an AE title
    `A result=ok`, a path with a newline) is quoted, and any control character left (CR, LF,
    ESC, ...) is escaped, so a peer's value can neither start a line nor add a field."""
    msg, args = record.msg, record.args
    if args and isinstance(msg, str) and isinstance(args, tuple):
        for position in _field_arguments(msg):
            value = args[position] if position < len(args) else ""
            # The common case in one C call: a str of printable ASCII without spaces or quotes.
            if type(value) is not str or not _ASCII_WORD.fullmatch(value):
                args = (*args[:position], _field_value(value), *args[position + 1 :])
        message = msg % args
    else:
        message = record.getMessage()
    return message if message.isprintable() else _escaped(message)


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
    as `message`; `worker` (`K/N`) names the worker process that wrote it, if one did."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        message = render(record)
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
        if self.worker is not None:
            line["worker"] = self.worker
        line["message"] = message
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


class PlainFormatter(logging.Formatter):
    """`time level event`; the time text is reused within a second (one line per image at
    thousands of images per second: localtime + strftime were a third of a record's cost).
    A worker process's lines end in ` worker=K/N`, so interleaved lines can be told apart."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
        self._second = -1
        self._text = ""
        self._suffix = f" worker={worker}" if worker is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        """As logging.Formatter.format, with the message from `render`; a traceback's lines
        are indented, so that a line that starts at the margin is always an event."""
        record.message = message = render(record)
        record.asctime = asctime = self.formatTime(record, self.datefmt)
        # The format string above, spelled out: one f-string instead of Formatter's
        # formatMessage -> PercentStyle.format -> _format for every image's line.
        line = f"{asctime} {record.levelname:<7} {message}{self._suffix}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text or record.stack_info:
            extra = [
                record.exc_text or "",
                self.formatStack(record.stack_info) if record.stack_info else "",
            ]
            for text in extra:
                if text:
                    line += "\n" + "\n".join("  " + part for part in _escaped_lines(text))
        return line

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = super().formatTime(record, datefmt)
            self._second = second
        return self._text


class LineHandler(logging.StreamHandler[TextIO]):
    """StreamHandler writing each record as one line, flushed: its `emit` without the second
    lock round and attribute checks of `flush()` (one line per image at thousands a second)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:  # as logging.StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)


def setup(level: str = "info", fmt: str = "plain", worker: str | None = None) -> None:
    """Configure the root logger for the command line; `worker` (`K/N`) tags every line of
    a worker process."""
    handler = LineHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(PlainFormatter(worker))
    # One event per line at thousands of images per second: skip the caller lookup and the
    # thread/process fields nobody formats (logging docs, "Optimization").
    logging._srcfile = None  # noqa: SLF001 (the knob the logging docs name for this)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
