"""What a scenario observed, with the differences a proxy may make masked, and the table.

The only differences allowed between a client talking to a peer directly and through dicomlb
are listed here, up front (`ALLOWED`). A scenario masks a value only under one of these
names: the mask keeps what is compared free of it, and records the raw values so that the
table can say which allowed difference actually showed up.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALLOWED: dict[str, str] = {
    "Date": "the `Date` response header: the time of the answer",
    "Server": "the `Server` response header",
    "lock token": "WebDAV lock tokens: a fresh one per LOCK",
    "generated UID": "UIDs a peer or the client generates per run (transaction UIDs)",
    "generated ID": "identifiers a peer generates per run (Orthanc job and query IDs)",
    "timestamp": "times a peer records (job creation / completion, WebDAV dates, runtimes)",
    "implementation": "the Implementation Class UID / Version Name of the A-ASSOCIATE-AC "
    "(dicomlb presents its own)",
    # Not in the list, and not behaviour: the client connected to another address,
    # and fields RFC 9110 7.6.1 scopes to one connection are not fields that must pass.
    "address": "the address the client connected to, wherever an answer repeats it",
    "hop-by-hop": "`Connection` and `Keep-Alive` response fields, which describe one connection"
    " (RFC 9110 7.6.1): whether the peer or dicomlb keeps the client's connection open",
}
HOP_BY_HOP = ("Connection", "Keep-Alive")

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ISO_TIME = re.compile(r"\d{8}T\d{6}(?:\.\d+)?")
HTTP_DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
LOCK_TOKEN = re.compile(r"opaquelocktoken:[0-9A-Za-z.:-]+")


class Masker:
    """One run's masks: each masked value becomes `<name>` or `<name N>` (N counts distinct
    values in order of appearance, so that two runs using their own values in the same
    places compare equal, and a value reused where another is expected does not)."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = list(addresses)  # host:port the client used, masked in answers
        self.seen: dict[str, list[str]] = {}

    def value(self, name: str, raw: object, *, numbered: bool = False) -> str:
        assert name in ALLOWED, f"{name!r} is not an allowed difference"
        text = str(raw)
        values = self.seen.setdefault(name, [])
        if text not in values:
            values.append(text)
        return f"<{name} {values.index(text) + 1}>" if numbered else f"<{name}>"

    def sub(self, name: str, pattern: re.Pattern[str], text: str, *, numbered: bool = False) -> str:
        return pattern.sub(lambda m: self.value(name, m.group(0), numbered=numbered), text)

    def text(self, text: str) -> str:
        """The masks every answer's text gets: the address, generated IDs, timestamps, lock
        tokens."""
        for address in self.addresses:
            if address in text:
                text = text.replace(address, self.value("address", address, numbered=True))
        text = self.sub("lock token", LOCK_TOKEN, text, numbered=True)
        text = self.sub("generated ID", UUID, text, numbered=True)
        for pattern in (ISO_TIME, HTTP_DATE, RFC3339):
            text = self.sub("timestamp", pattern, text)
        return text

    def headers(self, fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Response fields in order, `Date` and `Server` masked, hop-by-hop ones left out,
        the rest as `text`."""
        out = []
        for name, value in fields:
            key = name.title()
            if key in ("Date", "Server"):
                out.append((name, self.value(key, value)))
            elif key in HOP_BY_HOP:
                self.value("hop-by-hop", f"{name}: {value}")
            else:
                out.append((name, self.text(value)))
        return out

    def json(self, value: Any) -> Any:
        """A decoded JSON answer with `text` applied to every string."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self.json(v) for k, v in value.items()}
        return value


def digest(data: bytes) -> str:
    """A short name for bytes compared byte for byte: their length and SHA-256."""
    return f"{len(data)}B sha256:{hashlib.sha256(data).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the client (and the peers behind) saw: a one-line summary for the table and
    the full detail that is compared."""

    summary: str
    detail: Any


@dataclass(slots=True)
class Row:
    scenario: str
    direct: str
    through: str
    equal: bool
    allowed: list[str] = field(default_factory=list)  # allowed differences that showed
    known: str = ""  # the reason a difference stays (an xfail)


def differing(direct: Masker, through: Masker) -> list[str]:
    """The allowed differences whose raw values were not the same on both sides."""
    return [
        name
        for name in ALLOWED
        if name in direct.seen or name in through.seen
        if direct.seen.get(name) != through.seen.get(name)
    ]


def flatten(value: Any, path: str = "") -> list[str]:
    """`path = leaf` lines (lists of scalars are one leaf): a diff of them names each
    difference in one line."""
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in flatten(v, f"{path}.{k}")]
    if isinstance(value, list | tuple) and any(isinstance(v, dict | list | tuple) for v in value):
        return [line for n, v in enumerate(value) for line in flatten(v, f"{path}[{n}]")]
    return [f"{path or '.'} = {json.dumps(value, default=str, ensure_ascii=False)}"]


def difference(direct: Outcome, through: Outcome) -> str:
    """The lines that differ, as a unified diff of both outcomes flattened."""

    def lines(outcome: Outcome) -> list[str]:
        return [f"summary = {outcome.summary}", *flatten(outcome.detail)]

    diff = difflib.unified_diff(
        lines(direct), lines(through), "direct", "through", lineterm="", n=0
    )
    return "\n".join(diff)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_table(path: Path, rows: list[Row], known: Mapping[str, str]) -> None:
    """docs/differential.md: the allowed differences, then one row per scenario, then the
    differences that stay, each with its reason."""
    lines = [
        "# Differential suite: direct vs through dicomlb",
        "",
        "Generated by `DICOMLB_WRITE_DIFF_TABLE=1 .venv/bin/python -m pytest tests/differential`"
        " (`tests/differential/`). Each scenario runs the same client actions against real",
        "peers (Orthanc, DCMTK, pynetdicom, curl, httplib2) directly, then through dicomlb, and",
        "compares what the client saw: DIMSE statuses, data sets byte for byte, HTTP status,",
        "response fields and bodies.",
        "",
        "## Allowed differences",
        "",
        "Masked before comparing; the last column of the table names those that showed up.",
        "",
        *(f"- **{name}**: {why}" for name, why in ALLOWED.items()),
        "",
        "## Scenarios",
        "",
        "| scenario | direct | through dicomlb | equal | allowed differences seen / reason |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        note = row.known or ", ".join(row.allowed)
        lines.append(
            f"| {_cell(row.scenario)} | {_cell(row.direct)} | {_cell(row.through)} | "
            f"{'yes' if row.equal else '**no**'} | {_cell(note)} |"
        )
    lines += ["", "## Differences that stay", ""]
    if known:
        lines += [f"- **{scenario}**: {reason}" for scenario, reason in known.items()]
    else:
        lines.append("None.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
