"""Mutated real sessions against a running dicomlb, with a canary (about a minute in CI).

The long run (`-m slow`, or `python bench/fuzz_wire.py` for the figures in
bench/RESULTS.md) replays at least 100,000 sessions with the same pass criteria.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversarial.wire import FuzzTarget, Seeds, campaign
from tests.peers import have_dcmtk, have_orthanc

pytestmark = [
    pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (Debian dcmtk)"),
    pytest.mark.skipif(not have_orthanc(), reason="needs Orthanc (Debian orthanc)"),
    pytest.mark.orthanc,
]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FuzzTarget, Seeds]]:
    with FuzzTarget(tmp_path_factory.mktemp("fuzz")) as running:
        yield running, running.capture_seeds()


def test_seeds_are_real_sessions(target: tuple[FuzzTarget, Seeds]) -> None:
    """Each captured client session starts with an A-ASSOCIATE-RQ (or a request line) and
    ends with an A-RELEASE-RQ: the seeds are whole, valid sessions to mutate."""
    _, seeds = target
    assert set(seeds.dicom) >= {"echoscu", "storescu", "findscu", "getscu", "movescu"}
    for name, pdus in seeds.dicom.items():
        assert pdus[0][:1] == b"\x01", name
        assert pdus[-1][:1] == b"\x05", name
    for name, stream in seeds.http.items():
        assert stream.split(b" ", 1)[0] in {b"GET", b"POST", b"HEAD"}, name


def test_mutated_sessions_hurt_nobody(target: tuple[FuzzTarget, Seeds]) -> None:
    running, seeds = target
    seconds = float(os.environ.get("DICOMLB_FUZZ_SECONDS", "45"))
    seed = int(os.environ.get("DICOMLB_FUZZ_SEED", "1"))
    report = campaign(running, seeds, sessions=1_000_000, seconds=seconds, seed=seed)
    print(report.summary())
    assert report.sessions > 200, report.summary()
    assert report.canary_stores > 10 and report.canary_gets > 10, report.summary()
    assert report.failures() == [], report.summary()


@pytest.mark.slow
def test_long_run(target: tuple[FuzzTarget, Seeds], tmp_path: Path) -> None:
    running, seeds = target
    report = campaign(running, seeds, sessions=100_000, seconds=4 * 3600, seed=7)
    print(report.summary())
    assert report.sessions >= 100_000, report.summary()
    assert report.failures() == [], report.summary()
