"""The log events dicomlb's code writes, read from its source: every `log.<level>("event
key=%s ...", ...)` call, its event name, level(s) and keys.

An event name given as `%s` is resolved from the enclosing function: a local assigned string
constants (`event = "a" if x else "b"`), or a parameter whose callers in the same module pass
string constants. Anything else is an error naming the call, so that a new way of logging
cannot slip past the reference."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CALLER = "caller's"  # a level its caller may choose
_ORDER = (*LEVELS, CALLER)
_METHODS = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR"}
_EVENT = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_-]+)+")
_KEY = re.compile(r"(?<![\w.])([A-Za-z_]\w*)=")


class ExtractionError(ValueError):
    """A log call whose event name or level cannot be read from the source."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogCall:
    """One log call: where, the event name(s) it may write, its level(s) and keys."""

    where: str  # path:line
    events: tuple[str, ...]
    levels: tuple[str, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEvent:
    """One event name with the levels and keys of all the calls that write it."""

    name: str
    levels: tuple[str, ...]
    keys: tuple[str, ...]


def _strings(node: ast.expr) -> list[str] | None:
    """The string constants `node` may evaluate to (a constant or a conditional of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _strings(node.body), _strings(node.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def _levels(node: ast.expr) -> list[str] | None:
    """The levels `node` may be: `logging.INFO` or a conditional of such."""
    if isinstance(node, ast.Attribute) and node.attr in LEVELS:
        return [node.attr]
    if isinstance(node, ast.IfExp):
        body, orelse = _levels(node.body), _levels(node.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def _assigned(function: ast.AST, name: str) -> list[ast.expr]:
    return [
        node.value
        for node in ast.walk(function)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    ]


def _from_callers(module: ast.Module, function: ast.FunctionDef, name: str) -> list[str] | None:
    """The string constants the callers in `module` pass as parameter `name` of `function`."""
    params = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
    if name not in params:
        return None
    position = params.index(name)
    found: list[str] = []
    defaults = function.args.defaults
    default_of = dict(zip(params[len(params) - len(defaults) :], defaults, strict=True))
    for node in ast.walk(module):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func
        if not (
            (isinstance(callee, ast.Name) and callee.id == function.name)
            or (isinstance(callee, ast.Attribute) and callee.attr == function.name)
        ):
            continue
        shift = 1 if isinstance(callee, ast.Attribute) and params[:1] == ["self"] else 0
        keyword = next((k.value for k in node.keywords if k.arg == name), None)
        if keyword is not None:
            value: ast.expr | None = keyword
        elif position - shift < len(node.args):
            value = node.args[position - shift]
        else:
            value = default_of.get(name)
        strings = None if value is None else _strings(value)
        if strings is None:
            return None
        found += strings
    return found or None


def _resolve(node: ast.expr, scope: list[ast.AST], module: ast.Module) -> list[str] | None:
    """String constants `node` stands for, looked up in the enclosing function."""
    direct = _strings(node)
    if direct is not None or not isinstance(node, ast.Name):
        return direct
    function = next((s for s in reversed(scope) if isinstance(s, ast.FunctionDef)), None)
    if function is None:
        return None
    values = [_strings(v) for v in _assigned(function, node.id)]
    if values and all(v is not None for v in values):
        return [s for v in values if v is not None for s in v]
    return _from_callers(module, function, node.id)


def _resolve_level(node: ast.expr, scope: list[ast.AST]) -> list[str] | None:
    direct = _levels(node)
    if direct is not None or not isinstance(node, ast.Name):
        return direct
    function = next((s for s in reversed(scope) if isinstance(s, ast.FunctionDef)), None)
    if function is None:
        return None
    values = [_levels(v) for v in _assigned(function, node.id)]
    if values and all(v is not None for v in values):
        return [s for v in values if v is not None for s in v]
    # A `level` parameter: its default, or what a caller (anywhere) passes.
    arguments = function.args
    params = [*arguments.posonlyargs, *arguments.args]
    pairs: list[tuple[ast.arg, ast.expr | None]] = [
        *zip(params[len(params) - len(arguments.defaults) :], arguments.defaults, strict=True),
        *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
    ]
    for param, default in pairs:
        if param.arg == node.id and default is not None:
            levels = _levels(default)
            return None if levels is None else [*levels, CALLER]
    return None


def _conditional(node: ast.expr, scope: list[ast.AST]) -> ast.IfExp | None:
    """`node` as a conditional expression: itself, or a local's only assignment."""
    if isinstance(node, ast.IfExp):
        return node
    function = next((s for s in reversed(scope) if isinstance(s, ast.FunctionDef)), None)
    if not isinstance(node, ast.Name) or function is None:
        return None
    assigned = _assigned(function, node.id)
    only = assigned[0] if len(assigned) == 1 else None
    return only if isinstance(only, ast.IfExp) else None


def _paired(level: ast.expr, event: ast.expr, scope: list[ast.AST]) -> list[tuple[str, str]] | None:
    """(event, level) per branch when both are chosen by the same condition
    (`"store.delivered" if stored else "store.failed"` with `INFO if stored else WARNING`)."""
    levels, events = _conditional(level, scope), _conditional(event, scope)
    if levels is None or events is None or ast.dump(levels.test) != ast.dump(events.test):
        return None
    pairs = []
    for level_branch, event_branch in ((levels.body, events.body), (levels.orelse, events.orelse)):
        one_level, one_event = _levels(level_branch), _strings(event_branch)
        if one_level is None or one_event is None or len(one_level) + len(one_event) != 2:
            return None
        pairs.append((one_event[0], one_level[0]))
    return pairs


def _walk(node: ast.AST, scope: list[ast.AST]) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Call):
            yield child, scope
        inner = [*scope, child] if isinstance(child, ast.FunctionDef | ast.ClassDef) else scope
        yield from _walk(child, inner)


def calls_in(source: str, where: str) -> list[LogCall]:
    """The log calls of one module's source; `where` names the file in errors."""
    module = ast.parse(source)
    found: list[LogCall] = []
    for call, scope in _walk(module, []):
        callee = call.func
        if not (
            isinstance(callee, ast.Attribute)
            and isinstance(callee.value, ast.Name)
            and callee.value.id == "log"
            and callee.attr in (*_METHODS, "log")
        ):
            continue
        place = f"{where}:{call.lineno}"
        args = list(call.args)
        if callee.attr == "log":
            levels = _resolve_level(args.pop(0), scope) if args else None
            if levels is None:
                raise ExtractionError(f"{place}: cannot tell the level of this log.log call")
        else:
            levels = [_METHODS[callee.attr]]
        message = _strings(args[0]) if args else None
        if message is None or len(message) != 1:
            raise ExtractionError(f"{place}: the message is not a string constant")
        head, _, rest = message[0].partition(" ")
        if head == "%s":
            events = _resolve(args[1], scope, module) if len(args) > 1 else None
            if events is None:
                raise ExtractionError(f"{place}: cannot tell the event name given as %s")
        elif head.startswith("%s."):
            prefixes = _resolve(args[1], scope, module) if len(args) > 1 else None
            if prefixes is None:
                raise ExtractionError(f"{place}: cannot tell the event name given as {head}")
            events = [p + head[2:] for p in prefixes]
        else:
            events = [head]
        for event in events:
            if not _EVENT.fullmatch(event):
                raise ExtractionError(f"{place}: {event!r} is not a dotted event name")
        keys = tuple(dict.fromkeys(_KEY.findall(rest)))
        paired = _paired(call.args[0], args[1], scope) if callee.attr == "log" else None
        branches = [([e], [lv]) for e, lv in paired] if paired else [(events, levels)]
        for events_of, levels_of in branches:
            found.append(
                LogCall(
                    where=place,
                    events=tuple(dict.fromkeys(events_of)),
                    levels=tuple(sorted(set(levels_of), key=_ORDER.index)),
                    keys=keys,
                )
            )
    return found


def log_events(package: Path) -> list[LogEvent]:
    """Every event the modules under `package` log, by name, levels and keys merged."""
    levels: dict[str, set[str]] = {}
    keys: dict[str, dict[str, None]] = {}
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package.parent).as_posix()
        for call in calls_in(path.read_text(encoding="utf-8"), where):
            for event in call.events:
                levels.setdefault(event, set()).update(call.levels)
                keys.setdefault(event, {}).update(dict.fromkeys(call.keys))
    return [
        LogEvent(
            name=name,
            levels=tuple(sorted(levels[name], key=_ORDER.index)),
            keys=tuple(keys[name]),
        )
        for name in sorted(levels)
    ]
