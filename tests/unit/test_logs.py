"""logs.py: whatever a peer puts in a value, a record is one line and a field is one field."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from dicomlb.logs import JsonFormatter, LineHandler, PlainFormatter, event_fields, render

FORGED = "X\n2026-01-01T00:00:00 INFO    admin.reload result=ok source=api"


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = sys.exc_info() if exc else None
    return logging.LogRecord("dicomlb.test", logging.INFO, "", 0, msg, args, exc_info)


@pytest.mark.parametrize(
    "value",
    [FORGED, "X\r\nadmin.reload", "A\x1b[2Jcleared", "A\u2028B", "A\x00B", "A\x85B", "A\tB"],
)
def test_a_control_character_in_a_value_never_starts_a_line(value: str) -> None:
    for fmt in ("association.accepted calling_aet=%s called_aet=%s", "x why=%r", "%s.failed"):
        rec = record(fmt, *([value] * fmt.count("%")))
        line = PlainFormatter().format(rec)
        assert "\n" not in line and "\r" not in line and line.isprintable(), line
        assert "\n" not in JsonFormatter().format(rec)


def test_a_value_that_is_not_one_word_is_quoted_and_read_back() -> None:
    message = render(record("association.accepted calling_aet=%s called_aet=%s", FORGED, "LB"))
    assert message == (
        "association.accepted calling_aet='X\\n2026-01-01T00:00:00 INFO    admin.reload "
        "result=ok source=api' called_aet=LB"
    )
    assert event_fields(message) == (
        "association.accepted",
        {"calling_aet": FORGED, "called_aet": "LB"},
    )


@pytest.mark.parametrize("value", ["A result=ok", "CT 1", "it's", 'say "hi"', "'quoted'"])
def test_spaces_and_quotes_cannot_add_a_field(value: str) -> None:
    message = render(record("http.request path=%s status=%d", value, 200))
    assert event_fields(message) == ("http.request", {"path": value, "status": 200})
    rec = record("http.request path=%s status=%d", value, 200)
    line = json.loads(JsonFormatter().format(rec))
    assert (line["path"], line["status"]) == (value, 200) and "result" not in line


def test_ordinary_lines_are_unchanged() -> None:
    args = ("ct", "pacs", "pacs-b", "GET", "/dicom-web/studies/1.2.3/séries", 200, 3)
    fmt = "http.request route=%s pool=%s backend=%s method=%s path=%s status=%d ms=%d"
    assert render(record(fmt, *args)) == fmt % args
    # %r values, fragments that are not a field value, %% and mapping arguments
    assert render(record("x reason=%r n=%d%%", "a b", 5)) == "x reason='a b' n=5%"
    assert render(record("%s.failed %s", "move", "a=1 b=2")) == "move.failed a=1 b=2"
    assert render(record("x peer=%s:%d", "127.0.0.1", 104)) == "x peer=127.0.0.1:104"
    assert render(record("x a=%(a)s", {"a": "b c"})) == "x a=b c"
    assert render(record("x a=%s")) == "x a=%s"


def test_a_traceback_follows_its_line_indented() -> None:
    try:
        raise ValueError(FORGED)
    except ValueError:
        rec = record("spool.failed item=%d", 7, exc=True)
    first, *rest = PlainFormatter().format(rec).split("\n")
    assert first.endswith("spool.failed item=7")
    assert rest and all(line.startswith("  ") for line in rest)
    assert "\n" not in JsonFormatter().format(rec)


def test_the_plain_line_is_the_standard_formatters() -> None:
    rec = record("store.delivered sop_instance_uid=%s status=0x%04X ms=%d", "1.2.3", 0, 4)
    ours = PlainFormatter().format(rec)
    standard = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
    assert ours == standard.format(rec)
    assert ours.endswith(" INFO    store.delivered sop_instance_uid=1.2.3 status=0x0000 ms=4")


class _Counting(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_the_line_handler_writes_each_record_as_one_flushed_line() -> None:
    stream = _Counting()
    handler = LineHandler(stream)
    handler.setFormatter(PlainFormatter())
    for n in range(3):
        handler.handle(record("store.delivered n=%d", n))
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and [line.rsplit(" ", 1)[1] for line in lines[:-1]] == [
        "n=0",
        "n=1",
        "n=2",
    ]
    assert stream.flushes == 3
