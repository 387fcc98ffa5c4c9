"""Route matching: a route's `match` compiled once into a fast predicate; first match wins.

Pure code: no I/O, no clock. `config.py` compiles every route's `match` when it builds a
snapshot; the DIMSE path calls `Router.select` once per message with its `MessageFacts`.

A match is a mapping whose keys are ANDed together::

    {Modality: [CT, PT], calling_aet: {regex: "^CT_"}}

Keys are `all` / `any` (lists of matches), `not` (a match), the message facts
`calling_aet`, `called_aet`, `source`, `sop_class`, `command`, or a DICOM tag (keyword or
`(gggg,eeee)`) looked up in `MessageFacts.tags`. A value is a scalar (equals), a list (any
of) or a mapping with one operator: `equals`, `in`, `regex`, `glob`, `exists`, `absent`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import translate as glob_to_regex
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import keyword_dict

from dicomlb.dicom.tags import tag_from_name, tag_name
from dicomlb.quoting import show
from dicomlb.shadowing import EVERYTHING, OPAQUE, Condition, Conjunction, Op
from dicomlb.snapshot import MessageFacts, PartialPredicate, Predicate, RouteConfig

__all__ = [
    "COMMANDS",
    "FACT_KEYS",
    "OPERATORS",
    "Match",
    "MatchError",
    "Router",
    "compile_match",
    "parse_match",
    "uid_name",
]

# DIMSE command names as they appear in MessageFacts.command (PS3.7 9 and 10).
COMMANDS = (
    "C-STORE",
    "C-ECHO",
    "C-FIND",
    "C-MOVE",
    "C-GET",
    "C-CANCEL",
    "N-EVENT-REPORT",
    "N-GET",
    "N-SET",
    "N-ACTION",
    "N-CREATE",
    "N-DELETE",
)
# Each key and operator with its meaning: the match-language reference page is made from these.
FACT_KEYS: Mapping[str, str] = {
    "calling_aet": "the calling AE title of the association (the sender)",
    "called_aet": "the called AE title the sender asked for (dicomlb's, or a virtual one)",
    "source": "the sender's IP address: an address or a network (`10.0.0.0/8`)",
    "sop_class": "the SOP Class of the message: a UID or its keyword (`CTImageStorage`)",
    "command": "the DIMSE command: `C-STORE`, `C-ECHO`, `C-FIND`, `C-MOVE`, `C-GET`, `N-ACTION`, …",
}
LOGIC_KEYS: Mapping[str, str] = {
    "all": "a list of matches that must all hold",
    "any": "a list of matches of which one must hold",
    "not": "a match that must not hold",
}
OPERATORS: Mapping[str, str] = {
    "equals": "the value equals the operand (a bare scalar means the same)",
    "in": "the value is one of the listed operands (a bare list means the same)",
    "regex": "a regular expression found in the value (Python `re.search`)",
    "glob": "the whole value matches a shell pattern (`*`, `?`, `[…]`)",
    "exists": "`true`: the tag is present; `false`: it is absent",
    "absent": "`true`: the tag is absent",
}

# Padding that DICOM text values and AE titles may carry and that never matters (PS3.5 6.2).
_PAD = " \x00"
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UID_BY_KEYWORD = {entry[4]: uid for uid, entry in UID_dictionary.items() if entry[4]}

# Precedence of a text form, for parentheses: or < and < not / a single condition.
_OR, _AND, _ATOM = 1, 2, 3


class MatchError(ValueError):
    """A `match` that cannot be compiled; `path` is the dotted field path of the culprit."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """A compiled `match`: the predicate, its readable text and the DICOM tags it reads.

    `partial` decides the match from an association's facts alone (calling and called AE,
    source): True or False when those decide it, None when it depends on the message.
    `conjunction` is the match as conditions, for finding routes that can never match."""

    predicate: Predicate
    text: str
    tags: frozenset[int]
    partial: PartialPredicate
    precedence: int = _ATOM
    matches_everything: bool = False
    conjunction: Conjunction = OPAQUE


def parse_match(spec: Any, path: str) -> Match:
    """Compile a route's `match` (None or `{}` matches everything).

    Raises MatchError naming the offending field below `path`.
    """
    if spec is None or (isinstance(spec, dict) and not spec):
        return Match(
            predicate=_always,
            text="everything",
            tags=frozenset(),
            partial=_always,
            matches_everything=True,
            conjunction=EVERYTHING,
        )
    return _compile_mapping(spec, path)


def compile_match(spec: Any, path: str) -> Predicate:
    """Compile a route's `match` into a predicate over MessageFacts; see `parse_match`."""
    return parse_match(spec, path).predicate


class Router:
    """Picks the route for a message: the first route, in file order, whose match holds."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._routes = tuple(routes)

    @property
    def routes(self) -> tuple[RouteConfig, ...]:
        """The routes in the order they are tried."""
        return self._routes

    def select(self, facts: MessageFacts) -> RouteConfig | None:
        """The first route whose match holds for `facts`, or None when none does."""
        for route in self._routes:
            if route.match(facts):
                return route
        return None

    def candidates(self, association: MessageFacts) -> list[RouteConfig]:
        """The routes an association's messages may take, judged from its facts alone
        (calling and called AE, source): every route they do not rule out, up to the first
        they decide (first match wins, so later ones are never reached)."""
        found = []
        for route in self._routes:
            holds = route.partial(association)
            if holds is False:
                continue
            found.append(route)
            if holds:
                break
        return found


# --- compiling ------------------------------------------------------------------------------


def _always(facts: MessageFacts) -> bool:
    return True


def _undecided(facts: MessageFacts) -> bool | None:
    """The message's facts (SOP class, command, tags) are not known from the association."""
    return None


def _join(children: Sequence[Match], word: str, precedence: int) -> str:
    parts = [f"({c.text})" if c.precedence < precedence else c.text for c in children]
    return f" {word} ".join(parts)


def _all_of(children: Sequence[Match]) -> Match:
    tags = frozenset().union(*(c.tags for c in children))
    if len(children) == 1:
        return children[0]
    preds = tuple(c.predicate for c in children)
    if len(preds) == 2:
        first, second = preds

        def both(facts: MessageFacts) -> bool:
            return first(facts) and second(facts)

        predicate: Predicate = both
    else:

        def every(facts: MessageFacts) -> bool:
            return all(p(facts) for p in preds)

        predicate = every
    partials = tuple(c.partial for c in children)

    def all_partial(facts: MessageFacts) -> bool | None:
        results = [p(facts) for p in partials]  # Kleene's three-valued and
        if False in results:
            return False
        return None if None in results else True

    conjunction = children[0].conjunction
    for child in children[1:]:
        conjunction &= child.conjunction
    return Match(
        predicate=predicate,
        text=_join(children, "and", _AND),
        tags=tags,
        partial=all_partial,
        precedence=_AND,
        conjunction=conjunction,
    )


def _any_of(children: Sequence[Match]) -> Match:
    tags = frozenset().union(*(c.tags for c in children))
    if len(children) == 1:
        return children[0]
    preds = tuple(c.predicate for c in children)

    def some(facts: MessageFacts) -> bool:
        return any(p(facts) for p in preds)

    partials = tuple(c.partial for c in children)

    def any_partial(facts: MessageFacts) -> bool | None:
        results = [p(facts) for p in partials]  # Kleene's three-valued or
        if True in results:
            return True
        return None if None in results else False

    return Match(
        predicate=some,
        text=_join(children, "or", _OR),
        tags=tags,
        partial=any_partial,
        precedence=_OR,
    )


def _none_of(child: Match) -> Match:
    inner = child.predicate
    inner_partial = child.partial

    def negated(facts: MessageFacts) -> bool:
        return not inner(facts)

    def negated_partial(facts: MessageFacts) -> bool | None:
        holds = inner_partial(facts)
        return None if holds is None else not holds

    text = f"not ({child.text})" if child.precedence < _ATOM else f"not {child.text}"
    return Match(predicate=negated, text=text, tags=child.tags, partial=negated_partial)


def _compile_mapping(spec: Any, path: str) -> Match:
    if not isinstance(spec, dict):
        raise MatchError(
            path, f"{show(spec)} is not a mapping of conditions; write e.g. {{Modality: CT}}"
        )
    if not spec:
        raise MatchError(path, "is empty; write at least one condition, e.g. {Modality: CT}")
    children = [_compile_key(key, value, _child_path(path, key)) for key, value in spec.items()]
    return _all_of(children)


def _compile_list(spec: Any, path: str, word: str) -> list[Match]:
    if not isinstance(spec, list) or not spec:
        raise MatchError(
            path, f"{word} takes a non-empty list of matches; write {word}: [{{Modality: CT}}, ...]"
        )
    return [_compile_mapping(item, f"{path}[{i}]") for i, item in enumerate(spec)]


def _compile_key(key: Any, value: Any, path: str) -> Match:
    if not isinstance(key, str):
        raise MatchError(path, f"key {show(key)} is not text; write a match key or DICOM keyword")
    if key == "all":
        return _all_of(_compile_list(value, path, "all"))
    if key == "any":
        return _any_of(_compile_list(value, path, "any"))
    if key == "not":
        return _none_of(_compile_mapping(value, path))
    if key == "source":
        return _compile_source(value, path)
    if key in ("calling_aet", "called_aet"):
        getter = _fact_getter(key)
        match = _compile_field(key, value, path, getter, _text_literal, tags=frozenset())
        return dataclasses.replace(match, partial=match.predicate)
    if key == "sop_class":
        return _compile_field(
            key, value, path, _fact_getter("sop_class_uid"), _uid_literal, tags=frozenset()
        )
    if key == "command":
        return _compile_field(
            key, value, path, _fact_getter("command"), _command_literal, tags=frozenset()
        )
    try:
        tag = tag_from_name(key)
    except ValueError as err:
        close = difflib.get_close_matches(key, (*FACT_KEYS, *LOGIC_KEYS), n=1)
        if close:
            hint = f"did you mean {close[0]}? "
        else:
            found = difflib.get_close_matches(key, keyword_dict, n=1)
            hint = f"did you mean {found[0]}? " if found else ""
        raise MatchError(
            path,
            f'"{key}" is not a match key or DICOM keyword; {hint}use one of '
            f"{', '.join((*FACT_KEYS, *LOGIC_KEYS))}, a DICOM keyword or (gggg,eeee)",
        ) from err
    return _compile_field(
        tag_name(tag), value, path, _tag_getter(tag), _text_literal, tags=frozenset({tag})
    )


Getter = Callable[[MessageFacts], "str | None"]
Test = Callable[["str | None"], bool]


def _fact_getter(attribute: str) -> Getter:
    """The fact, stripped of padding; None when empty (so `exists` means non-empty)."""

    def get(facts: MessageFacts) -> str | None:
        return getattr(facts, attribute).strip(_PAD) or None

    return get


def _tag_getter(tag: int) -> Getter:
    def get(facts: MessageFacts) -> str | None:
        return facts.tags.get(tag)

    return get


def _compile_field(
    name: str,
    value: Any,
    path: str,
    getter: Getter,
    literal: Callable[[Any, str], str],
    *,
    tags: frozenset[int],
) -> Match:
    test, text, op, values = _compile_test(name, value, path, literal)
    conjunction = Conjunction((Condition(name, op, values),))
    if tags:
        # A DICOM tag's value may be multi-valued (`ORIGINAL\PRIMARY`): the condition holds if
        # it holds for the whole value or for any one component (PS3.5 6.4).
        def tag_predicate(facts: MessageFacts) -> bool:
            raw = getter(facts)
            if raw is None:
                return test(None)
            if test(raw.strip(_PAD)):
                return True
            if "\\" in raw:
                return any(test(part.strip(_PAD)) for part in raw.split("\\"))
            return False

        return Match(
            predicate=tag_predicate,
            text=text,
            tags=tags,
            partial=_undecided,
            conjunction=conjunction,
        )

    def fact_predicate(facts: MessageFacts) -> bool:
        return test(getter(facts))

    return Match(
        predicate=fact_predicate,
        text=text,
        tags=tags,
        partial=_undecided,
        conjunction=conjunction,
    )


Compiled = tuple[Test, str, Op, frozenset[str]]  # the test, its text, as a condition


def _compile_test(name: str, value: Any, path: str, literal: Callable[[Any, str], str]) -> Compiled:
    """A test on one (stripped) value, None meaning absent, its text and its condition."""
    if isinstance(value, list):
        return _in_test(name, value, path, literal)
    if not isinstance(value, dict):
        return _equals_test(name, value, path, literal)
    if len(value) != 1:
        raise MatchError(
            path,
            f"has {len(value)} operators ({', '.join(map(str, value))}); use exactly one of "
            f"{', '.join(OPERATORS)}, and all: [...] to combine conditions",
        )
    ((op, operand),) = value.items()
    op_path = _child_path(path, op)
    if op == "equals":
        return _equals_test(name, operand, op_path, literal)
    if op == "in":
        return _in_test(name, operand, op_path, literal)
    if op == "regex":
        return _regex_test(name, operand, op_path)
    if op == "glob":
        return _glob_test(name, operand, op_path)
    if op in ("exists", "absent"):
        if not isinstance(operand, bool):
            raise MatchError(op_path, f"{op} takes true or false, not {show(operand)}")
        present = operand if op == "exists" else not operand
        if present:
            return (lambda v: v is not None), f"{name} exists", Op.EXISTS, frozenset()
        return (lambda v: v is None), f"{name} absent", Op.ABSENT, frozenset()
    close = difflib.get_close_matches(str(op), list(OPERATORS), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise MatchError(
        op_path, f"{show(op)} is not an operator; {hint}use one of {', '.join(OPERATORS)}"
    )


def _equals_test(
    name: str, operand: Any, path: str, literal: Callable[[Any, str], str]
) -> Compiled:
    expected = literal(operand, path)
    text = f"{name} = {_quote(_shown(operand, expected, literal))}"
    return (lambda v: v == expected), text, Op.IN, frozenset({expected})


def _shown(operand: Any, value: str, literal: Callable[[Any, str], str]) -> str:
    """How a literal reads in a match's text: a SOP class as written (a keyword such as
    CTImageStorage stays one), anything else as compared."""
    return str(operand).strip(_PAD) if literal is _uid_literal else value


def _in_test(name: str, operand: Any, path: str, literal: Callable[[Any, str], str]) -> Compiled:
    if not isinstance(operand, list) or not operand:
        raise MatchError(path, f"{show(operand)} is not a non-empty list; write [A, B]")
    values = [literal(item, f"{path}[{i}]") for i, item in enumerate(operand)]
    if len(values) == 1:
        return _equals_test(name, operand[0], f"{path}[0]", literal)
    allowed = frozenset(values)
    shown = ", ".join(_quote(_shown(o, v, literal)) for o, v in zip(operand, values, strict=True))
    return (lambda v: v in allowed), f"{name} in [{shown}]", Op.IN, allowed


def _regex_test(name: str, operand: Any, path: str) -> Compiled:
    if not isinstance(operand, str):
        raise MatchError(path, f"{show(operand)} is not a regular expression; put it in quotes")
    try:
        search = re.compile(operand).search
    except re.error as err:
        raise MatchError(
            path, f'"{operand}" is not a valid regular expression ({err}); fix the pattern'
        ) from err
    text = f"{name} ~ /{operand}/"
    return (lambda v: v is not None and search(v) is not None), text, Op.REGEX, frozenset({operand})


def _glob_test(name: str, operand: Any, path: str) -> Compiled:
    if not isinstance(operand, str):
        raise MatchError(path, f"{show(operand)} is not a glob pattern; put it in quotes")
    # fnmatch.translate gives the regex fnmatchcase uses; compiled here once.
    full = re.compile(glob_to_regex(operand)).match
    text = f"{name} like {_quote(operand)}"
    return (lambda v: v is not None and full(v) is not None), text, Op.GLOB, frozenset({operand})


def _text_literal(value: Any, path: str) -> str:
    """A literal compared with a text value: text or an integer, padding stripped."""
    if value is None:
        raise MatchError(path, "is empty; write a value")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MatchError(
            path, f"{show(value)} is not text; put it in quotes so YAML keeps it as written"
        )
    return str(value).strip(_PAD)


def _uid_literal(value: Any, path: str) -> str:
    """A SOP class: a UID or a pydicom keyword such as CTImageStorage."""
    text = _text_literal(value, path)
    if _UID_RE.fullmatch(text) and len(text) <= 64:
        return text
    uid = _UID_BY_KEYWORD.get(text)
    if uid is not None:
        return uid
    close = difflib.get_close_matches(text, _UID_BY_KEYWORD, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise MatchError(
        path,
        f'"{text}" is neither a UID nor a UID keyword; {hint}write a UID such as '
        "1.2.840.10008.5.1.4.1.1.2 or a keyword such as CTImageStorage",
    )


def _command_literal(value: Any, path: str) -> str:
    text = _text_literal(value, path).upper().replace("_", "-")
    if text not in COMMANDS:
        raise MatchError(
            path, f'"{value}" is not a DIMSE command; use one of {", ".join(COMMANDS)}'
        )
    return text


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _compile_source(value: Any, path: str) -> Match:
    """`source`: the peer's IP in one of the given addresses or CIDR networks."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("equals", "in"):
        ((op, value),) = value.items()
        path = _child_path(path, op)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise MatchError(path, "is an empty list; write an address or network, e.g. 10.0.0.0/8")
    networks: list[IpNetwork] = []
    written: list[str] = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]" if isinstance(value, list) else path
        if not isinstance(item, str):
            raise MatchError(
                item_path,
                f"{show(item)} is not an IP address or network; write e.g. 10.0.0.0/8 or ::1",
            )
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError as err:
            raise MatchError(
                item_path,
                f'"{item}" is not an IP address or network; write e.g. 10.0.0.5, 10.0.0.0/8 '
                "or fd00::/8",
            ) from err
        networks.append(network)
        written.append(item.strip())
    v4 = tuple(n for n in networks if n.version == 4)
    v6 = tuple(n for n in networks if n.version == 6)

    def in_networks(facts: MessageFacts) -> bool:
        try:
            ip = ipaddress.ip_address(facts.peer_ip)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is None:
                return any(ip in n for n in v6)
            return any(ip.ipv4_mapped in n for n in v4)  # ::ffff:10.0.0.5 from a dual stack
        return any(ip in n for n in v4)

    text = f"source in [{', '.join(written)}]" if len(written) > 1 else f"source in {written[0]}"
    condition = Condition("source", Op.SOURCE, networks=tuple(networks))
    return Match(
        predicate=in_networks,
        text=text,
        tags=frozenset(),
        partial=in_networks,
        conjunction=Conjunction((condition,)),
    )


# --- text -----------------------------------------------------------------------------------


def uid_name(uid: str) -> str | None:
    """The name of a UID in PS3.6 (`CT Image Storage`), or None when it has none."""
    entry = UID_dictionary.get(uid)
    return entry[0] if entry else None


def _child_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


_PLAIN = re.compile(r"[A-Za-z0-9_.\-^*?]+")


def _quote(text: str) -> str:
    return text if _PLAIN.fullmatch(text) else f'"{text}"'
