"""The header scanner fed in 1..16-byte fragments (agrees with pydicom, linear work), the path
normaliser's work per byte counted, and the admission decisions as properties."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools

import pytest
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from dicomlb.dicom.admission import (
    LogBudget,
    Rejection,
    admit_association,
    admit_connection,
    allowed,
    source_address,
)
from dicomlb.dicom.pdu import RejectReason, RejectResult, reject
from dicomlb.dicom.tags import HeaderScanner
from dicomlb.http.paths import EncodedSlashes, PathError, normalize_target
from dicomlb.snapshot import AllowRule, DicomListenerConfig
from tests.unit.fuzzing import assert_linear, fast_and_slow, small_pieces
from tests.unit.test_tags import (
    CRAFTED,
    ENCODINGS,
    WANTED,
    datasets,
    decode,
    encode,
    expected_values,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# ------------------------------------------------------------------ header scanner


def _small_pieces_agree_with_pydicom(dataset: Dataset, ts: str, seed: int) -> None:
    data = encode(dataset, ts)
    expected = expected_values(decode(data, ts), WANTED)
    scanner = HeaderScanner(ts, WANTED)
    for piece in small_pieces(data, seed):
        if scanner.feed(piece):
            break
    scanner.finish()
    assert scanner.values == expected


test_small_pieces_agree_with_pydicom, test_small_pieces_agree_with_pydicom_slow = fast_and_slow(
    _small_pieces_agree_with_pydicom,
    dataset=datasets(),
    ts=st.sampled_from(sorted(ENCODINGS)),
    seed=st.integers(0, 1 << 16),
)


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_scanner_work_in_small_pieces_grows_linearly(kind: str) -> None:
    # tests/unit/test_tags.py feeds 512 and 2048-byte fragments; here 1..16 bytes, where a
    # scanner that kept or re-walked its buffer per fragment would show it most.
    def run(n: int) -> None:
        scanner = HeaderScanner("1.2.840.10008.1.2.1", WANTED)
        for piece in small_pieces(CRAFTED[kind](n), seed=n):
            scanner.feed(piece)
        scanner.finish()

    assert_linear(run, 16 * 1024)


# ------------------------------------------------------------------ path normaliser


@pytest.mark.parametrize("unit", [b"/a/..", b"/%2e", b"%41", b"/", b"/.;", b"%2F", b"/a;b"])
def test_path_work_grows_linearly_counted(unit: bytes) -> None:
    # tests/unit/test_paths.py times it; this counts calls and CPU, which load cannot skew.
    def run(n: int) -> None:
        with contextlib.suppress(PathError):
            normalize_target(b"/a" * (n // 4) + unit * (n // len(unit) // 2))
        with contextlib.suppress(PathError):
            normalize_target(b"/a" * (n // 4) + unit * (n // len(unit) // 2), slashes=PASS)

    assert_linear(run, 64 * 1024)


PASS = EncodedSlashes.PASS


def _mutated_target_normalises_or_fails(
    base: bytes, at: int, byte: int, slashes: EncodedSlashes
) -> None:
    """A target damaged at one byte: PathError or a normalised path, which normalises to
    itself (what routes see is what the backend sees)."""
    target = bytearray(base)
    target[at % len(target)] = byte
    try:
        normal = normalize_target(bytes(target), slashes=slashes)
    except PathError:
        return
    assert normal.startswith(b"/")
    assert normalize_target(normal, slashes=slashes) == normal


test_mutated_target_normalises_or_fails, test_mutated_target_normalises_or_fails_slow = (
    fast_and_slow(
        _mutated_target_normalises_or_fails,
        base=st.sampled_from(
            [b"/dicom-web/studies/1.2.3/series?x=%2e", b"/a/./b/../c//d%7e;p", b"/%41%2e%2E/x"]
        ),
        at=st.integers(0, 64),
        byte=st.integers(0, 255),
        slashes=st.sampled_from(EncodedSlashes),
    )
)


# ------------------------------------------------------------------ admission decisions

limits = st.integers(1, 8)
counts = st.integers(0, 10)
ae_titles = st.sampled_from(["CT1", "CT2", "MR_3T", "ANY", "", "*"])
addresses = st.sampled_from(
    ["10.1.2.7", "10.1.3.5", "::ffff:10.1.2.7", "fd00::1", "fe80::1%eth0", "bogus", ""]
)
rules = st.lists(
    st.builds(
        AllowRule,
        aet=st.none() | st.sampled_from(["CT1", "MR*", "?T1"]),
        network=st.none()
        | st.sampled_from([ipaddress.ip_network("10.1.2.0/24"), ipaddress.ip_network("fd00::/64")]),
    ),
    max_size=3,
)


def _connection_decision(max_negotiating: int, per_ip: int, negotiating: int, from_ip: int) -> None:
    config = DicomListenerConfig(max_negotiating=max_negotiating, max_negotiating_per_ip=per_ip)
    refusal = admit_connection(config, negotiating=negotiating, negotiating_from_ip=from_ip)
    if negotiating >= max_negotiating:
        assert refusal is not None and refusal.setting == "max_negotiating"
    elif from_ip >= per_ip:
        assert refusal is not None and refusal.setting == "max_negotiating_per_ip"
    else:
        assert refusal is None


test_connection_decision, test_connection_decision_slow = fast_and_slow(
    _connection_decision,
    max_negotiating=limits,
    per_ip=limits,
    negotiating=counts,
    from_ip=counts,
)


def _association_decision(
    allow: list[AllowRule],
    limit: int,
    per_ip: int,
    per_aet: int,
    aet: str,
    ip: str,
    active: int,
    from_ip: int,
    from_aet: int,
) -> None:
    config = DicomListenerConfig(
        allow=tuple(allow),
        max_associations=limit,
        max_associations_per_ip=per_ip,
        max_associations_per_calling_aet=per_aet,
    )

    def decide(active: int, from_ip: int, from_aet: int) -> Rejection | None:
        return admit_association(
            config,
            calling_aet=aet,
            peer_ip=ip,
            active=active,
            active_from_ip=from_ip,
            active_from_aet=from_aet,
        )

    rejection = decide(active, from_ip, from_aet)
    if not allowed(config.allow, aet, ip):
        assert rejection is not None and rejection.setting == "allow"
        assert rejection.answer == reject(RejectReason.CALLING_AE_NOT_RECOGNIZED)
        return
    over = (
        active >= limit
        or (per_ip > 0 and from_ip >= per_ip)
        or (per_aet > 0 and from_aet >= per_aet)
    )
    assert (rejection is not None) is over
    if rejection is not None:
        answer = rejection.answer
        assert answer.result is RejectResult.TRANSIENT  # a limit passes; try again later
        assert answer == reject(RejectReason.LOCAL_LIMIT_EXCEEDED, transient=True)
    else:
        # Fewer associations open never turns an admission into a refusal.
        for fewer in ((0, 0, 0), (active // 2, from_ip // 2, from_aet // 2)):
            assert decide(*fewer) is None


test_association_decision, test_association_decision_slow = fast_and_slow(
    _association_decision,
    allow=rules,
    limit=limits,
    per_ip=st.integers(0, 4),
    per_aet=st.integers(0, 4),
    aet=ae_titles,
    ip=addresses,
    active=counts,
    from_ip=counts,
    from_aet=counts,
)


def _any_peer_text_is_decided(peer_ip: str, aet: str, allow: list[AllowRule]) -> None:
    address = source_address(peer_ip)
    assert address is None or isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert allowed(tuple(allow), aet, peer_ip) in (True, False)
    if not allow:
        assert allowed((), aet, peer_ip)


test_any_peer_text_is_decided, test_any_peer_text_is_decided_slow = fast_and_slow(
    _any_peer_text_is_decided,
    peer_ip=st.text(max_size=45) | addresses,
    aet=st.text(max_size=16),
    allow=rules,
)


def _log_budget_loses_nothing(period: float, steps: list[float]) -> None:
    """Nothing lost: every event is logged or counted in the next line logged; lines are
    at least `period` apart."""
    budget = LogBudget(period)
    now = 0.0
    logged_at: list[float] = []
    held_reported = 0
    for step in steps:
        now += step
        held = budget.take(now)
        if held is not None:
            held_reported += held
            logged_at.append(now)
    assert logged_at and logged_at[0] == steps[0]
    assert all(b - a >= period for a, b in itertools.pairwise(logged_at))
    # What was held after the last line logged is still pending in the budget.
    assert held_reported + len(logged_at) <= len(steps)
    pending = len(steps) - held_reported - len(logged_at)
    assert budget.take(now + 2 * period) == pending


test_log_budget_loses_nothing, test_log_budget_loses_nothing_slow = fast_and_slow(
    _log_budget_loses_nothing,
    period=st.sampled_from([0.5, 1.0, 5.0]),
    steps=st.lists(st.floats(0, 3, allow_nan=False), min_size=1, max_size=50),
)
