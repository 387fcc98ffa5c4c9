"""The normalised path of a request target: examples, refusals with their problem, and
hypothesis properties (only PathError ever escapes; idempotent; the fast check agrees with
the full normaliser; escapes of unreserved characters change nothing; linear time)."""

from __future__ import annotations

import contextlib
import re
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dicomlb.http.paths import (
    EncodedSlashes,
    PathError,
    PathProblem,
    normalize_path,
    normalize_target,
    plain_target,
)

PASS = EncodedSlashes.PASS


@pytest.mark.parametrize(
    ("target", "normal"),
    [
        (b"/", b"/"),
        (b"/dicom-web/studies?limit=1", b"/dicom-web/studies?limit=1"),
        (b"/a/../secret", b"/secret"),
        (b"/a/%2e%2e/secret", b"/secret"),
        (b"/a/.%2E/secret", b"/secret"),
        (b"//secret", b"/secret"),
        (b"/./secret", b"/secret"),
        (b"//instances", b"/instances"),  # Orthanc's own clients send it: merged
        (b"/a//b///c", b"/a/b/c"),
        (b"/a/b/..", b"/a/"),
        (b"/a/b/.", b"/a/b/"),
        (b"/a/..", b"/"),
        (b"/a/", b"/a/"),
        (b"/a//", b"/a/"),
        (b"/.well-known/x", b"/.well-known/x"),
        (b"/a/.../b", b"/a/.../b"),
        (b"/a%7e%41%2d%5F%2E", b"/a~A-_."),
        (b"/a%c3%a9%20b", b"/a%C3%A9%20b"),
        (b"/a%3f%23%25", b"/a%3F%23%25"),
        (b"/a;b/c;x=1", b"/a;b/c;x=1"),
        (b"/a?../..%2F%00#", b"/a?../..%2F%00#"),  # the query is untouched
        (b"/a/%2e%2e?x=/../", b"/?x=/../"),
        (b"/a{b}|c", b"/a{b}|c"),
    ],
)
def test_normal_forms(target: bytes, normal: bytes) -> None:
    assert normalize_target(target) == normal
    assert normalize_target(normal) == normal


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        (b"/a/..%2Fsecret", PathProblem.ENCODED_SLASH),
        (b"/%2Fsecret", PathProblem.ENCODED_SLASH),
        (b"/%2fsecret", PathProblem.ENCODED_SLASH),
        (b"/a%5Cb", PathProblem.ENCODED_SLASH),
        (b"/a\\..\\secret", PathProblem.BACKSLASH),
        (b"/../secret", PathProblem.ABOVE_ROOT),
        (b"/a/../../secret", PathProblem.ABOVE_ROOT),
        (b"/%2e%2e", PathProblem.ABOVE_ROOT),
        (b"/a/..;/secret", PathProblem.DOT_PARAMETERS),
        (b"/.;x/secret", PathProblem.DOT_PARAMETERS),
        (b"/a/%2e%2e;x/b", PathProblem.DOT_PARAMETERS),
        (b"/a%00", PathProblem.CONTROL),
        (b"/a%0A", PathProblem.CONTROL),
        (b"/a%7f", PathProblem.CONTROL),
        (b"/a\x00", PathProblem.CONTROL),
        (b"/a b", PathProblem.CONTROL),
        (b"/a\xe9", PathProblem.BAD_CHARACTER),
        (b"/a%", PathProblem.BAD_ESCAPE),
        (b"/a%2", PathProblem.BAD_ESCAPE),
        (b"/a%zz", PathProblem.BAD_ESCAPE),
        (b"/a#frag", PathProblem.FRAGMENT),
        (b"*", PathProblem.NOT_ORIGIN_FORM),
        (b"http://h/secret", PathProblem.NOT_ORIGIN_FORM),
        (b"h:443", PathProblem.NOT_ORIGIN_FORM),
        (b"", PathProblem.NOT_ORIGIN_FORM),
        (b"?x", PathProblem.NOT_ORIGIN_FORM),
    ],
)
def test_refusals_name_their_problem(target: bytes, problem: PathProblem) -> None:
    with pytest.raises(PathError) as caught:
        normalize_target(target)
    assert caught.value.problem is problem


def test_encoded_slashes_may_pass_undecoded() -> None:
    assert normalize_target(b"/a/..%2fsecret", slashes=PASS) == b"/a/..%2Fsecret"
    assert normalize_target(b"/a%5cb/%2F", slashes=PASS) == b"/a%5Cb/%2F"
    with pytest.raises(PathError):
        normalize_target(b"/a\\b", slashes=PASS)  # a raw backslash never


# --- properties -----------------------------------------------------------------------------

PIECES = [
    b"/", b"//", b".", b"..", b"%2e", b"%2E", b"%2F", b"%2f", b"%5C", b"%00", b"%41", b"%7e",
    b"%c3", b"%25", b"%", b"%g", b"%4", b";", b";x", b"a", b"bc", b"?", b"#", b"\\", b"~", b" ",
    b"\x7f", b"\xff", b"{", b"-",
]  # fmt: skip
targets = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=24).map(lambda p: b"/" + b"".join(p)),
    st.lists(st.sampled_from(PIECES), max_size=24).map(b"".join),
    st.binary(max_size=64),
)
UNRESERVED_ESCAPE = re.compile(rb"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee])")


@settings(max_examples=2000, deadline=None)
@given(target=targets, slashes=st.sampled_from(EncodedSlashes))
@example(target=b"/a/.%2e/b", slashes=EncodedSlashes.REJECT)
def test_only_path_error_and_idempotent(target: bytes, slashes: EncodedSlashes) -> None:
    try:
        normal = normalize_target(target, slashes=slashes)
    except PathError:
        return
    assert normalize_target(normal, slashes=slashes) == normal
    path = normal.partition(b"?")[0]
    assert path.startswith(b"/") and b"//" not in path
    assert all(0x21 <= byte <= 0x7E for byte in path) and b"#" not in path
    segments = path.split(b"/")[1:]
    assert not {b".", b".."} & set(segments)
    assert not any(s.partition(b";")[0] in (b".", b"..") and b";" in s for s in segments)
    assert UNRESERVED_ESCAPE.search(path) is None
    assert re.search(rb"%[0-9A-F]?[a-f]", path) is None  # hex in upper case
    if plain_target(target) is not None:
        assert normal == target


@settings(max_examples=1000, deadline=None)
@given(target=targets)
def test_the_fast_check_agrees_with_the_normaliser(target: bytes) -> None:
    if plain_target(target) is not None:
        path = target.partition(b"?")[0]
        assert normalize_path(path) == path


@settings(max_examples=500, deadline=None)
@given(
    path=st.lists(st.sampled_from([b"/", b"a", b"..", b".", b"~", b"-", b"b"]), max_size=16),
    encode=st.lists(st.booleans(), max_size=16),
)
def test_escaping_unreserved_characters_changes_nothing(
    path: list[bytes], encode: list[bool]
) -> None:
    plain = b"/" + b"".join(path)
    escaped = b"/" + b"".join(
        b"".join(b"%%%02x" % c for c in piece) if piece != b"/" and flag else piece
        for piece, flag in zip(path, encode + [False] * len(path), strict=False)
    )
    try:
        normal = normalize_target(plain)
    except PathError as err:
        with pytest.raises(PathError) as caught:
            normalize_target(escaped)
        assert caught.value.problem is err.problem
        return
    assert normalize_target(escaped) == normal


@pytest.mark.parametrize(
    "unit", [b"/a/..", b"/%2e", b"%41", b"/", b"/a", b"/.;", b"%", b"/a/.", b"%2F"]
)
def test_linear_time(unit: bytes) -> None:
    def cost(n: int) -> float:
        target = b"/a" * n + unit * n  # `/a` first: `..` units have something to pop
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            with contextlib.suppress(PathError):
                normalize_target(target)
            best = min(best, time.perf_counter() - started)
        return best

    small, large = cost(20_000), cost(160_000)
    # 8 times the input: linear costs 8 times more, quadratic 64 (margin for a loaded machine)
    assert large < small * 24 + 0.01
