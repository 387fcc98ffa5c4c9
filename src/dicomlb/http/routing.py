"""HTTP routes: a route's `match` compiled once into a predicate over `RequestFacts`; the
first route in file order whose match holds wins. Pure: no I/O, no clock.

A match is a mapping whose keys must all hold::

    {host: [pacs.example.org, "*.pacs.local"], path_prefix: /dicom-web/, method: [GET, HEAD],
     headers: {X-Tenant: a, Authorization: {exists: true}}, query: {expand: {regex: "^t"}}}

`host` (exact or glob, case-insensitive, port ignored), `path` (exact), `path_prefix`,
`path_regex` (search, anchored by the author), `method`, `headers` and `query` (name →
value). A value is a scalar (equals), a list (any of) or one operator `regex`, `glob`,
`exists`.

Paths are matched in their normalised form (`paths.normalize_target`, the form the request
reader gives and the backend receives: escapes of unreserved characters decoded, others kept
with upper-case hex); `path` and `path_prefix` values are normalised the same way when the
match is compiled, so `/a b/` matches a request for `/a%20b/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import translate as glob_to_regex
from typing import Any

from dicomlb.http.paths import PathError, normalize_path
from dicomlb.routing import MatchError
from dicomlb.shadowing import EVERYTHING, Condition, Conjunction, Op
from dicomlb.snapshot import HttpPredicate, HttpRouteConfig, RequestFacts

# A value YAML reads back as the same text without quotes.
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./\-*?^$ ]*(?<! )")

__all__ = [
    "MATCH_KEYS",
    "VALUE_OPERATORS",
    "HttpMatch",
    "HttpRouter",
    "parse_http_match",
    "request_path",
]

# Each key and operator with its meaning: the match-language reference page is made from these.
MATCH_KEYS: Mapping[str, str] = {
    "host": "the request's host, case-insensitive, port ignored; exact or a glob (`*.example.org`)",
    "path": "the normalised path equals the value (the query left out)",
    "path_prefix": "the normalised path starts with the value",
    "path_regex": "a regular expression found in the normalised path (Python `re.search`)",
    "method": "the request method (`GET`, `POST`, …), case-insensitive",
    "headers": "a mapping of header name to value condition; names case-insensitive",
    "query": "a mapping of query parameter name to value condition",
}
VALUE_OPERATORS: Mapping[str, str] = {
    "regex": "a regular expression found in the value (Python `re.search`)",
    "glob": "the whole value matches a shell pattern (`*`, `?`, `[…]`)",
    "exists": "`true`: the header or parameter is present; `false`: it is absent",
}


def request_path(target: str) -> str:
    """The path of a (normalised) request target, the query left out."""
    return target.partition("?")[0]


def _match_path(value: str, where: str) -> str:
    """A `path` / `path_prefix` value in the normalised form requests are matched in
    (characters outside printable ASCII percent-encoded as UTF-8 first)."""
    if not value.startswith("/"):
        raise MatchError(where, f'"{value}" does not start with "/"')
    written = b"".join(
        bytes((c,)) if 0x20 < c < 0x7F else b"%%%02X" % c for c in value.encode("utf-8")
    )
    try:
        return normalize_path(written).decode("ascii")
    except PathError as err:
        raise MatchError(where, f'"{value}": {err}') from None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpMatch:
    """A compiled HTTP `match`; `conjunction` is it as conditions, for finding routes that
    can never match."""

    predicate: HttpPredicate
    text: str
    conjunction: Conjunction
    matches_everything: bool = False


def _always(facts: RequestFacts) -> bool:
    return True


def parse_http_match(spec: Any, path: str) -> HttpMatch:
    """Compile an HTTP route's `match` (None or `{}` matches everything). Raises MatchError
    naming the offending field below `path`."""
    if spec is None or spec == {}:
        return HttpMatch(
            predicate=_always, text="everything", conjunction=EVERYTHING, matches_everything=True
        )
    if not isinstance(spec, dict):
        raise MatchError(path, f"{spec!r} is not a mapping; write e.g. {{path_prefix: /api/}}")
    preds: list[HttpPredicate] = []
    texts: list[str] = []
    conditions: list[Condition] = []
    for key, value in spec.items():
        where = f"{path}.{key}"
        if key not in MATCH_KEYS:
            raise MatchError(where, f'unknown match key "{key}"; use {", ".join(MATCH_KEYS)}')
        pred, found = _compile_key(key, value, where)
        preds.append(pred)
        conditions += found
        texts.append(f"{key}: {written(value)}")
    return HttpMatch(
        predicate=_every(preds), text=", ".join(texts), conjunction=Conjunction(tuple(conditions))
    )


def written(value: Any) -> str:
    """A match value as a YAML flow value, the way it reads in the config file."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{written(k)}: {written(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(written(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _every(preds: Sequence[HttpPredicate]) -> HttpPredicate:
    if len(preds) == 1:
        return preds[0]
    items = tuple(preds)

    def every(facts: RequestFacts) -> bool:
        return all(p(facts) for p in items)

    return every


def _strings(value: Any, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
        raise MatchError(where, f"{value!r} is not text or a list of text")
    return [str(v) for v in values]


def _compile_key(key: str, value: Any, where: str) -> tuple[HttpPredicate, list[Condition]]:
    """The predicate of one match key, and the conditions it stands for."""
    if key == "headers" or key == "query":
        if not isinstance(value, dict) or not value:
            raise MatchError(where, f"{key} takes a mapping of names to values, e.g. {{X-A: b}}")
        preds = []
        conditions = []
        for name, wanted in value.items():
            test, op, wanted_values = _value_test(wanted, f"{where}.{name}")
            header = key == "headers"
            preds.append(_header_pred(str(name), test) if header else _query_pred(str(name), test))
            # Header names are case-insensitive (RFC 9110 5.1), query names are not.
            field = f"header:{str(name).lower()}" if header else f"query:{name}"
            conditions.append(Condition(field, op, wanted_values))
        return _every(preds), conditions
    if key == "path_regex":
        if not isinstance(value, str):
            raise MatchError(where, f"{value!r} is not a regular expression")
        try:
            pattern = re.compile(value)
        except re.error as err:
            raise MatchError(where, f'"{value}" is not a regular expression ({err})') from None
        search = pattern.search
        return (lambda f: search(f.path) is not None), [
            Condition("path", Op.REGEX, frozenset({value}))
        ]
    values = _strings(value, where)
    if key == "method":
        methods = frozenset(v.upper() for v in values)
        return (lambda f: f.method in methods), [Condition("method", Op.IN, methods)]
    if key == "path":
        paths = frozenset(_match_path(p, where) for p in values)
        return (lambda f: f.path in paths), [Condition("path", Op.IN, paths)]
    if key == "path_prefix":
        prefixes = tuple(_match_path(p, where) for p in values)
        condition = Condition("path", Op.PREFIX, frozenset(prefixes))
        return (lambda f: f.path.startswith(prefixes)), [condition]
    # host
    exact = frozenset(v.lower() for v in values if not any(c in v for c in "*?["))
    globs = [v.lower() for v in values if any(c in v for c in "*?[")]
    if globs:
        pattern = re.compile("|".join(glob_to_regex(g) for g in globs))
        condition = Condition("host", Op.GLOB, frozenset(exact | set(globs)))
        return (lambda f: f.host in exact or pattern.match(f.host) is not None), [condition]
    return (lambda f: f.host in exact), [Condition("host", Op.IN, exact)]


ValueTest = Callable[[list[str]], bool]


def _value_test(wanted: Any, where: str) -> tuple[ValueTest, Op, frozenset[str]]:
    """A test over all values a header / query parameter has (empty list: absent), and it
    as a condition."""
    if isinstance(wanted, dict):
        if len(wanted) != 1 or next(iter(wanted)) not in VALUE_OPERATORS:
            raise MatchError(where, f"write one operator of {', '.join(VALUE_OPERATORS)}")
        op, arg = next(iter(wanted.items()))
        if op == "exists":
            if not isinstance(arg, bool):
                raise MatchError(f"{where}.exists", "write true or false")
            if arg:
                return (lambda vs: bool(vs)), Op.EXISTS, frozenset()
            return (lambda vs: not vs), Op.ABSENT, frozenset()
        if not isinstance(arg, str):
            raise MatchError(f"{where}.{op}", f"{arg!r} is not text")
        try:
            pattern = re.compile(arg if op == "regex" else glob_to_regex(arg))
        except re.error as err:
            raise MatchError(
                f"{where}.regex", f'"{arg}" is not a regular expression ({err})'
            ) from None
        if op == "regex":
            return (lambda vs: any(pattern.search(v) for v in vs)), Op.REGEX, frozenset({arg})
        return (lambda vs: any(pattern.match(v) for v in vs)), Op.GLOB, frozenset({arg})
    allowed = frozenset(_strings(wanted, where))
    return (lambda vs: any(v in allowed for v in vs)), Op.IN, allowed


def _header_pred(name: str, test: Callable[[list[str]], bool]) -> HttpPredicate:
    wanted = name.lower().encode("latin-1")

    def pred(facts: RequestFacts) -> bool:
        values = [v.decode("latin-1") for k, v in facts.headers if k.lower() == wanted]
        return test(values)

    return pred


def _query_pred(name: str, test: Callable[[list[str]], bool]) -> HttpPredicate:
    return lambda facts: test(facts.query(name))


class HttpRouter:
    """Picks the HTTP route for a request: the first, in file order, whose match holds."""

    __slots__ = ("everything", "routes")

    def __init__(self, routes: Sequence[HttpRouteConfig]) -> None:
        self.routes = tuple(routes)
        # The route every request takes when the first one matches everything: then no
        # request needs its facts gathered to be routed.
        self.everything = routes[0] if routes and routes[0].match is _always else None

    def select(self, facts: RequestFacts) -> HttpRouteConfig | None:
        """The first route whose match holds for `facts`, or None."""
        for route in self.routes:
            if route.match(facts):
                return route
        return None
