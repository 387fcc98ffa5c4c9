"""Routes that can never match: an earlier route (file order, first match wins) matches
every message or request a later one matches. Pure: no I/O.

A match is read as a conjunction of conditions, one per key (`Modality in {CT, PT}`,
`source in 10.0.0.0/8`, `path starts with /a/`). Route A shadows route B when each of A's
conditions follows from one of B's: B's other conditions only narrow B. Only what can be
decided is judged: values and prefixes by set inclusion, networks by containment, a
regular expression or glob only by being the very same pattern. A match with `any` or `not`
is never taken to shadow another (it may hold on less than its conditions say), though a
later one with them may be shadowed, since they only narrow it.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EVERYTHING", "OPAQUE", "Condition", "Conjunction", "Op", "covers", "shadowed"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Op(enum.Enum):
    IN = "in"  # the value is one of `values`
    PREFIX = "prefix"  # the value starts with one of `values`
    SOURCE = "source"  # the address is in one of `networks`
    EXISTS = "exists"  # the value is present
    ABSENT = "absent"  # the value is absent
    REGEX = "regex"  # undecidable but for the same pattern
    GLOB = "glob"


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition on one key (`calling_aet`, `Modality`, `host`, `path`,
    `header:x-tenant`), values normalised as they are compared."""

    key: str
    op: Op
    values: frozenset[str] = frozenset()
    networks: tuple[IpNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Conjunction:
    """What a compiled match holds on: all of `conditions`; `exact` False when the match
    also has parts no condition expresses (`any`, `not`), so that it may hold on less."""

    conditions: tuple[Condition, ...] = ()
    exact: bool = True

    def __and__(self, other: Conjunction) -> Conjunction:
        return Conjunction(self.conditions + other.conditions, self.exact and other.exact)


EVERYTHING = Conjunction()  # no condition: a catch-all
OPAQUE = Conjunction(exact=False)  # nothing known


def _implies(b: Condition, a: Condition) -> bool:
    """Whether every value meeting `b` meets `a` (False when that cannot be decided)."""
    if b.key != a.key:
        return False
    if b == a:
        return True
    if a.op is Op.EXISTS:
        return b.op is not Op.ABSENT
    if a.op is Op.IN and b.op is Op.IN:
        return b.values <= a.values
    if a.op is Op.PREFIX and b.op in (Op.IN, Op.PREFIX):
        return all(any(v.startswith(p) for p in a.values) for v in b.values)
    if a.op is Op.SOURCE and b.op is Op.SOURCE:
        return all(
            any(n.version == m.version and n.subnet_of(m) for m in a.networks)  # type: ignore[arg-type]
            for n in b.networks
        )
    return False


def covers(a: Conjunction, b: Conjunction) -> bool:
    """Whether whatever `b` holds on, `a` holds on too."""
    return a.exact and all(any(_implies(cb, ca) for cb in b.conditions) for ca in a.conditions)


def shadowed(routes: Sequence[tuple[str, Conjunction]]) -> list[tuple[str, str]]:
    """`(route, earlier route)` for each route (in file order) that an earlier one covers,
    naming the first such."""
    found = []
    for j, (name, match) in enumerate(routes):
        for earlier, before in routes[:j]:
            if covers(before, match):
                found.append((name, earlier))
                break
    return found
