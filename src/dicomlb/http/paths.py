"""The one normalised path of a request target (RFC 3986 6.2.2), or why there is none. Pure.

Routes, middlewares, Orthanc pins, logs and the backend all see the same path N::

    normalize_target(b"/a/%2e%2e/b//c%7e?x=%2e")   # b"/b/c~?x=%2e"

N is the path with the escapes of unreserved characters decoded (`%7E` → `~`), the hex of
every other escape in upper case (`%c3` → `%C3`), `.` and `..` segments resolved (also when
written `%2e`), and `//` merged; the query after the first `?` is kept byte for byte (as
Envoy's `normalize_path` and HAProxy's `normalize-uri` leave it). What cannot be made one
path safely is refused with `PathError` (a 400): a `%` without two hex digits, `%00` and
other control characters, `..` above the root, a `.` / `..` segment hidden behind
`;parameters` (`/..;/`, which Tomcat reads as `..`), a fragment, `\\`, and encoded slashes
`%2F` / `%5C` — unless the listener passes those through undecoded (`EncodedSlashes.PASS`),
for backends whose resource names contain them.

Only origin-form targets (`/path?query`, RFC 9112 3.2.1) have a path: absolute-form,
authority-form (CONNECT) and `*` are refused too.

The common target (no `%`, no `\\`, no `#`, no empty or dot-led segment) is checked by one
regular expression and returned as it is.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "EncodedSlashes",
    "PathError",
    "PathProblem",
    "normalize_path",
    "normalize_target",
    "plain_target",
]


class EncodedSlashes(enum.StrEnum):
    """What `%2F` and `%5C` in a path do: refused (400), or kept encoded, never decoded."""

    REJECT = "reject"
    PASS = "pass"


class PathProblem(enum.Enum):
    """Why a target has no normalised path (the value says it to the client)."""

    NOT_ORIGIN_FORM = "the request target is not a path starting with / (RFC 9112 3.2.1)"
    BAD_ESCAPE = "a % in the path is not followed by two hex digits"
    CONTROL = "the path holds %00 or another control character"
    BAD_CHARACTER = "the path holds a byte not allowed there (only printable ASCII, no ?)"
    BACKSLASH = "the path holds a backslash"
    FRAGMENT = "the request target holds a fragment (#)"
    ENCODED_SLASH = "the path holds an encoded slash (%2F or %5C)"
    ABOVE_ROOT = "a .. segment in the path goes above the root"
    DOT_PARAMETERS = "a . or .. segment in the path carries ;parameters"


class PathError(Exception):
    """A request target that cannot be normalised safely; answered 400."""

    def __init__(self, problem: PathProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


# RFC 3986 2.3 / 3.3: a segment's characters other than "%". A plain target uses only these
# (no "." first in a segment: neither a dot segment nor hidden behind ";"), and no empty
# segment but a last one.
_FIRST = rb"!$&'()*+,\-0-9:;<=>@A-Z\[\]^_`a-z{|}~\""
_SEGMENT = rb"[" + _FIRST + rb"][" + _FIRST + rb".]*+"
# Possessive and atomic: nothing to backtrack into, so a long target is one pass.
_PLAIN = rb"/(?>(?:" + _SEGMENT + rb"/)*+)(?:" + _SEGMENT + rb")?+"
plain_target = re.compile(_PLAIN + rb"(?:\?|\Z)").match
"""Matches a target that is normalised already (its path; the query is not looked at)."""
_plain_path = re.compile(_PLAIN + rb"\Z").match

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DOT_SEGMENTS = (b".", b"..")
_escape = re.compile(rb"%(?:[0-9A-Fa-f]{2})?")
_not_path_byte = re.compile(rb"[^\x21-\x7e]|[#?\\]")


def _escapes(slashes: EncodedSlashes) -> dict[bytes, bytes | PathProblem]:
    """What each `%XX` (hex in upper case) becomes, or why it is refused."""
    table: dict[bytes, bytes | PathProblem] = {}
    for byte in range(256):
        upper = b"%%%02X" % byte
        if byte in _UNRESERVED:
            becomes: bytes | PathProblem = bytes((byte,))
        elif byte < 0x20 or byte == 0x7F:
            becomes = PathProblem.CONTROL
        elif byte in b"/\\" and slashes is EncodedSlashes.REJECT:
            becomes = PathProblem.ENCODED_SLASH
        else:
            becomes = upper
        table[upper] = becomes
    return table


_ESCAPES = {slashes: _escapes(slashes) for slashes in EncodedSlashes}


def normalize_target(target: bytes, *, slashes: EncodedSlashes = EncodedSlashes.REJECT) -> bytes:
    """The target with its path normalised and its query (after the first `?`) untouched.
    Raises `PathError`."""
    if plain_target(target) is not None:
        return target
    path, mark, query = target.partition(b"?")
    return normalize_path(path, slashes=slashes) + mark + query


def normalize_path(path: bytes, *, slashes: EncodedSlashes = EncodedSlashes.REJECT) -> bytes:
    """The normalised form of an absolute path (no query). Raises `PathError`."""
    if _plain_path(path) is not None:
        return path
    if not path.startswith(b"/"):
        raise PathError(PathProblem.NOT_ORIGIN_FORM)
    bad = _not_path_byte.search(path)
    if bad is not None:
        byte = bad[0]
        raise PathError(
            PathProblem.FRAGMENT
            if byte == b"#"
            else PathProblem.BACKSLASH
            if byte == b"\\"
            else PathProblem.CONTROL
            if byte < b"\x21" or byte == b"\x7f"
            else PathProblem.BAD_CHARACTER
        )
    if b"%" in path:
        # Whole, before splitting: no escape decodes to a separator (%2F and %5C are
        # refused or stay encoded), so the segments are the same.
        escapes = _ESCAPES[slashes]

        def decode(match: re.Match[bytes]) -> bytes:
            becomes = escapes.get(match[0].upper(), PathProblem.BAD_ESCAPE)
            if isinstance(becomes, PathProblem):
                raise PathError(becomes)
            return becomes

        path = _escape.sub(decode, path)
    out: list[bytes] = []
    keep = out.append
    segments = path[1:].split(b"/")
    for segment in segments:
        if segment and segment[0] != 0x2E:  # neither empty nor led by "."
            keep(segment)
        elif segment == b"..":
            if not out:
                raise PathError(PathProblem.ABOVE_ROOT)
            out.pop()
        elif segment and segment != b".":  # ".well-known", "...", but not ".;x" / "..;x"
            if segment.partition(b";")[0] in _DOT_SEGMENTS:
                raise PathError(PathProblem.DOT_PARAMETERS)
            keep(segment)
        # (empty: merged; ".": the current directory)
    last = segments[-1]
    if out and (not last or last == b"." or last == b".."):
        out.append(b"")  # `/a/b/..`, `/a/.`, `/a/`: the path ends in a slash
    return b"/" + b"/".join(out)
