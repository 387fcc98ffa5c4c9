"""Logging setup: one event per line, `event key=value ...` or JSON."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger and the event line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": record.getMessage(),
            }
        )


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
