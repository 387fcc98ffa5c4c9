"""What every part of the config file is read with: the error type (`ConfigIssue` /
`ConfigError`, one line per problem naming the field), value parsers (durations, sizes,
addresses, AE titles, names), the pydantic `Model` base, pydantic errors turned into issues,
and the YAML loader with its limits. Imports nothing else of `dicomlb.config`."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
)

from dicomlb.quoting import show

__all__ = [
    "BIND_SCHEMA",
    "DURATION_TEXT",
    "MAX_ALIAS_NODES",
    "MAX_CONFIG_BYTES",
    "MAX_YAML_DEPTH",
    "NAME",
    "NAME_HINT",
    "SIZE_SCHEMA",
    "SIZE_TEXT",
    "AeTitle",
    "ConfigError",
    "ConfigIssue",
    "Count",
    "Duration",
    "Fail",
    "Interval",
    "MatchSpec",
    "Model",
    "Name",
    "Size",
    "check_ae_title",
    "check_name",
    "defaults",
    "dotted",
    "format_duration",
    "host_port",
    "is_loopback",
    "issue_from_pydantic",
    "load_yaml",
    "parse_bind",
    "parse_duration",
    "parse_size",
    "positive_duration",
    "show",
    "split_host_port",
    "unset",
    "value_kind",
    "written",
]

Fail = Callable[[str, str], None]  # fail(path, message): record one issue and go on

# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigIssue:
    """One problem: where (a dotted path such as `pools.ct.backends[1].dicom`, or a line) and
    what, including what to do."""

    path: str = ""
    message: str
    line: int | None = None


class ConfigError(Exception):
    """A configuration that cannot be used; its text has one `<file>: <path>: <reason>` line
    per problem."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(self._line(issue) for issue in self.issues)

    def _line(self, issue: ConfigIssue) -> str:
        where = self.source if issue.line is None else f"{self.source}:{issue.line}"
        return (
            f"{where}: {issue.path}: {issue.message}" if issue.path else f"{where}: {issue.message}"
        )


# --- values ---------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_UNIT_SECONDS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}
_DURATION_HINT = 'write seconds as a number or a string like "500ms", "5s", "2m", "1h" or "1m30s"'


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string such as `"500ms"`, `"5s"`, `"2m"`, `"1h"`,
    `"1m30s"`. Raises ValueError with what to write instead."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{show(value)} is not a duration; {_DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().replace(" ", "")
        parts = list(_DURATION_PART.finditer(text))
        if _DURATION_NUMBER.fullmatch(text):
            seconds = float(text)
        elif text and "".join(m.group(0) for m in parts) == text:
            # Exact arithmetic, rounded once: "59ms" is 0.059, not 0.059000000000000004.
            total = sum(Fraction(m.group(1)) * _UNIT_SECONDS[m.group(2)] for m in parts)
            seconds = float(total)
        else:
            raise ValueError(f"{show(value)} is not a duration; {_DURATION_HINT}")
    if not seconds < float("inf") or seconds < 0:
        raise ValueError(f"{show(value)} is not a duration; {_DURATION_HINT}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form that `parse_duration` reads back to the same value."""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    millis = seconds * 1000
    if millis.is_integer() and millis / 1000 == seconds:
        return f"{int(millis)}ms"
    return f"{Decimal(repr(seconds)):f}s"  # positional: parse_duration reads no exponents


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtT]i?[bB]|[bB])?")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE_HINT = 'write a number of bytes or a string like "500MB", "20GB" or "1.5GiB"'


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as `"500MB"`, `"20GB"`, `"1.5GiB"` (kB/MB/GB/TB
    are powers of 1000, KiB/MiB/GiB/TiB of 1024). Raises ValueError with what to write."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{show(value)} is not a size; {_SIZE_HINT}")
    if isinstance(value, int | float):
        size = float(value)
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{show(value)} is not a size; {_SIZE_HINT}")
        size = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    if not 0 <= size < float("inf"):
        raise ValueError(f"{show(value)} is not a size; {_SIZE_HINT}")
    return int(size)


def positive_duration(value: Any) -> float:
    """`parse_duration`, and more than zero."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{show(value)} must be more than zero; {_DURATION_HINT}")
    return seconds


def check_ae_title(value: str) -> str:
    """PS3.5 6.2 AE: 1-16 characters of the default repertoire, no backslash or control
    characters, not only spaces; leading and trailing spaces are not significant."""
    if not value.strip(" "):
        raise ValueError(f"{show(value)} is not an AE title: it is empty; write 1-16 characters")
    if len(value) > 16:
        raise ValueError(
            f"{show(value)} is not an AE title: it has {len(value)} characters; "
            "shorten it to 16 or fewer"
        )
    if "\\" in value or any(not (" " <= ch <= "~") for ch in value):
        raise ValueError(
            f"{show(value)} is not an AE title: it has a backslash, control or non-ASCII "
            "character; use letters, digits, spaces and punctuation only"
        )
    return value.strip(" ")


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def split_host_port(text: str, original: str, form: str) -> tuple[str, int]:
    """`host:port` with host an IPv4 address, a hostname or `[IPv6]`."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f'"{original}" has no closing "]"; write {form}')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f'"{original}": [{host}] is not an IPv6 address; write {form}'
            ) from None
        if not rest.startswith(":"):
            raise ValueError(f'"{original}" has no port; write {form}')
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f'"{original}" has no port; write {form}')
        if ":" in host:
            raise ValueError(
                f'"{original}": an IPv6 address needs brackets; write {form} with [host]'
            )
        if not host:
            raise ValueError(f'"{original}" has no host; write {form}')
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(
                f'"{original}": "{host}" is not a host name or IP address; write {form}'
            )
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(
            f'"{original}": port "{port_text}" is not a number from 1 to 65535; write {form}'
        )
    return host, int(port_text)


def parse_bind(value: Any) -> tuple[str, int]:
    """The `bind:` of a listener: `host:port`."""
    form = "host:port, e.g. 0.0.0.0:11112 or [::]:11112"
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{show(value)} is not an address to listen on; write {form}")
    return split_host_port(value.strip(), value.strip(), form)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_HINT = 'use up to 64 letters, digits, ".", "_" and "-", starting with a letter or digit'


def check_name(value: str) -> str:
    """A backend or route name: NAME_HINT says what it may hold."""
    if not NAME.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid name; {NAME_HINT}")
    return value


# What the JSON Schema says of values read by the parsers above: the YAML may write them as
# text ("5s", "20GB", "AET@host:port"), which the parsed Python types would not admit.
DURATION_TEXT = r"^\s*((\d+(\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*)+$"
SIZE_TEXT = r"^\s*(\d+(\.\d*)?|\.\d+)\s*([kKmMgGtT]i?[bB]|[bB])?\s*$"
_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": DURATION_TEXT},
        ]
    }
)
_INTERVAL_SCHEMA = WithJsonSchema(
    {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": DURATION_TEXT}]}
)
SIZE_SCHEMA = WithJsonSchema(
    {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": SIZE_TEXT}]}
)
# A route's match is compiled by the routing modules, which name what is wrong in it.
MatchSpec = Annotated[Any, WithJsonSchema({"type": ["object", "null"]})]
BIND_SCHEMA = WithJsonSchema({"type": "string", "pattern": r":[0-9]+\s*$"})

Duration = Annotated[float, BeforeValidator(positive_duration), _DURATION_SCHEMA]
Interval = Annotated[float, BeforeValidator(parse_duration), _INTERVAL_SCHEMA]  # 0 allowed
AeTitle = Annotated[str, Field(strict=True), AfterValidator(check_ae_title)]
Name = Annotated[
    str,
    Field(strict=True),
    AfterValidator(check_name),
    WithJsonSchema({"type": "string", "pattern": f"^{NAME.pattern}$"}),
]
Count = Annotated[StrictInt, Field(ge=1)]
Size = Annotated[int, BeforeValidator(parse_size), SIZE_SCHEMA]


class Model(BaseModel):
    """A part of the file: unknown keys are errors; parsed values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def unset(description: str, default: Any = None) -> Any:
    """A key that stays None when the file does not write it (the builder passes on only what
    is `written`, so the snapshot's default applies); `default` is that effective default,
    shown by the JSON Schema and the reference."""
    extra: dict[str, Any] | None = None if default is None else {"default": default}
    return Field(default=None, description=description, json_schema_extra=extra)


def defaults(cls: type) -> dict[str, Any]:
    """The defaults of a snapshot dataclass's fields, by name: what `unset` keys show."""
    found: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            found[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            found[item.name] = item.default_factory()
    return found


def written(model: BaseModel | None, *skip: str) -> dict[str, Any]:
    """The fields written in the file (not None), except `skip`: the rest keep the
    snapshot's defaults, which live in one place."""
    if model is None:
        return {}
    return {
        name: value
        for name in type(model).model_fields
        if name not in skip and (value := getattr(model, name)) is not None
    }


def is_loopback(host: str) -> bool:
    """localhost or a loopback IP address (127.0.0.0/8, ::1); other names are not
    resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- loading --------------------------------------------------------------------------------

# A configuration is a few kB; these bound what a broken or hostile file costs to read.
MAX_CONFIG_BYTES = 1024 * 1024  # pure-Python PyYAML took 53 s for 4 MiB of "[1,1,…]" here
MAX_YAML_DEPTH = 64  # nesting of mappings and lists; a configuration needs about 8
MAX_ALIAS_NODES = 100_000  # nodes that aliases repeat in all (a "billion laughs" needs 10⁹)

# O_NONBLOCK: opening a FIFO for reading would wait for a writer; the mode is checked next.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _LimitError(yaml.composer.ComposerError):
    """The document nests deeper or repeats more through aliases than a configuration may."""

    @classmethod
    def at(cls, event: yaml.Event, problem: str) -> _LimitError:
        # The pure-Python loader's marks; libyaml's (yaml._yaml.Mark) never reach here.
        mark = event.start_mark if isinstance(event.start_mark, yaml.error.Mark) else None
        return cls(None, None, problem, mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one, silently), nesting
    deeper than MAX_YAML_DEPTH (the composer recurses per level) and aliases that repeat more
    than MAX_ALIAS_NODES nodes (aliases cost nothing to compose, but validation walks every
    repetition), counted while composing so that such a document fails at once."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._repeated = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        node: yaml.Node | None
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # its anchor is still open: the alias is inside what it names
                raise _LimitError.at(
                    event,
                    f"alias *{event.anchor} refers to a node that contains it; write the value out",
                )
            self._repeated += size
            if self._repeated > MAX_ALIAS_NODES:
                raise _LimitError.at(
                    event,
                    f"aliases repeat more than {MAX_ALIAS_NODES} nodes (a YAML alias "
                    "bomb?); write the values out or use fewer aliases",
                )
            return node
        if self._depth >= MAX_YAML_DEPTH:
            raise _LimitError.at(
                event,
                f"nested deeper than {MAX_YAML_DEPTH} levels of mappings and lists; a "
                "configuration needs far fewer",
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        return node


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, typing.Hashable) and key in seen:
            first = seen[key].start_mark.line + 1
            raise _DuplicateKeyError(
                None,
                None,
                f'duplicate key "{key}" (first at line {first}); keep one of them',
                key_node.start_mark,
            )
        if isinstance(key, typing.Hashable):
            seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_config(path: str | Path) -> str:
    """The text of the regular file at `path` (symbolic links followed: Kubernetes mounts a
    ConfigMap as links), at most MAX_CONFIG_BYTES. Raises ConfigError."""
    source = str(path)

    def refuse(message: str) -> ConfigError:
        return ConfigError(source, [ConfigIssue(message=message)])

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        raise refuse(f"cannot read the file ({err}); check the path") from err
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
            raise refuse(f"is {kind}, not a regular file; point at the YAML file itself")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise refuse(f"cannot read the file ({err.strerror}); check the path") from err
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise refuse(
            f"is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB, the most a configuration "
            "file may be; check that this is the right file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise refuse(
            f"is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None


def load_yaml(path: str | Path) -> Any:
    """The data of the YAML file at `path`, read within the limits above. Raises ConfigError
    naming the line."""
    source = str(path)
    text = _read_config(path)
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        column = f" (column {mark.column + 1})" if mark else ""
        if isinstance(err, _DuplicateKeyError | _LimitError):
            message = str(err.problem)
        else:
            problem = err.problem or err.context or "not valid YAML"
            message = (
                f"YAML syntax error: {problem}{column}; check indentation, colons and quoting "
                "on that line"
            )
        raise ConfigError(source, [ConfigIssue(line=line, message=message)]) from err
    except yaml.YAMLError as err:
        raise ConfigError(
            source, [ConfigIssue(message=f"YAML syntax error: {err}; fix the file")]
        ) from err


# --- pydantic errors → issues ---------------------------------------------------------------


def dotted(loc: Sequence[int | str]) -> str:
    """A pydantic location as the file writes it: `pools.ct.backends[1].dicom`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path = f"{path}.{part}" if path else part
    return path


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that the value at `loc` (inside a `root`) is validated with, if any."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def issue_from_pydantic(error: Any, root: type[BaseModel]) -> ConfigIssue:
    """One pydantic error (an item of `ValidationError.errors()` from `root.model_validate`)
    as an issue saying what to write instead."""
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    field = str(loc[-1]) if loc and isinstance(loc[-1], str) else ""
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(field, allowed, n=3)
        # Equal scores ("pool": "pools" or "spool"?): the one starting alike reads right.
        close.sort(key=lambda name: name[:1] != field[:1])
        hint = f'did you mean "{close[0]}"? ' if close else ""
        message = f'unknown key "{field}"; {hint}allowed keys: {", ".join(allowed)}'
    elif kind == "missing":
        message = f"{field or 'this'} is required; add it"
    elif value is None:
        message = "is empty; write a value or remove the key"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    elif kind == "too_short":
        message = f"{show(value)} is empty; list at least one item"
    elif kind == "greater_than_equal":
        message = f"{show(value)} is too small; write a number of at least {ctx.get('ge')}"
        if field == "weight":
            message += " (to take a backend out of rotation, remove it from the pool)"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"{show(value)} is not a whole number; write one, e.g. 4"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"{show(value)} is not true or false; write true or false"
    elif kind in ("string_type", "string_parsing"):
        message = f"{show(value)} is not text; write text, in quotes if YAML would change it"
    elif kind == "enum":
        expected = str(ctx.get("expected", "")).replace("'", "")
        message = f"{show(value)} is not a {field or 'choice'}; use one of {expected}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"{show(value)} is {value_kind(value)}; write a mapping of keys and values"
    elif kind in ("list_type", "tuple_type"):
        message = f"{show(value)} is {value_kind(value)}; write a list, e.g. [a, b]"
    else:
        message = f"{error['msg']} (got {show(value)})"
    return ConfigIssue(path=dotted(loc), message=message)


def value_kind(value: Any) -> str:
    """What a value is, in words: "a mapping", "a list", "text", …"""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "empty"
    return f"a {type(value).__name__}"
