"""Active health checks against real storescp backends: down within fall x interval,
studies move to the next backend in their rendezvous order, and come back after rise."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dicomlb.pools import rendezvous_order
from tests.dicomdata import make_series, make_studies, write_series
from tests.peers import StoreSCP, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

INTERVAL, FALL, RISE = 0.2, 2, 2


def wait_until(predicate: Any, timeout: float) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def test_stopped_backend_goes_down_its_studies_move_and_come_back(
    tmp_path: Path, balancer: Any
) -> None:
    a = StoreSCP("PACSA", tmp_path / "a", fork=True).start()
    b = StoreSCP("PACSB", tmp_path / "b", fork=True).start()
    try:
        lb = balancer(
            {
                "pools": {
                    "ct": {
                        "strategy": "affinity",
                        "health": {"interval": INTERVAL, "timeout": 1, "fall": FALL, "rise": RISE},
                        "backends": [
                            {"name": "pacs-a", "dicom": a.address},
                            {"name": "pacs-b", "dicom": b.address},
                        ],
                    }
                },
                "routes": [{"name": "all", "pool": "ct"}],
            }
        )
        pacs_a, pacs_b = lb.backend("pacs-a"), lb.backend("pacs-b")
        # a study whose first choice is pacs-a
        for _ in range(50):
            studies = make_studies([("CT", 3)])
            uid = next(iter(studies))
            if rendezvous_order(uid, [pacs_a, pacs_b])[0] is pacs_a:
                break
        files = write_series(studies[uid], tmp_path / "study")

        a.stop()
        took = wait_until(lambda: not pacs_a.health.up, timeout=5)
        # fall consecutive failures, each at most one interval (+ the check itself) apart
        assert took <= FALL * INTERVAL + 1.5
        assert pacs_b.health.up

        result = storescu("127.0.0.1", lb.port, files, aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        assert len(b.files()) == 3, "the study moves to the next backend in its order"

        a.start()
        wait_until(lambda: pacs_a.health.up, timeout=5)
        more = write_series(make_series(2, rows=64, cols=64, study_uid=uid), tmp_path / "more")
        result = storescu("127.0.0.1", lb.port, more, aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        assert len(a.files()) == 2, "the study returns to its first choice once it is back"
    finally:
        a.close()
        b.close()


def test_no_healthy_backend_refuses_association_transiently(tmp_path: Path, balancer: Any) -> None:
    a = StoreSCP("PACSA", tmp_path / "a").start()
    lb = balancer(
        {
            "pools": {
                "only": {
                    "health": {"interval": INTERVAL, "timeout": 1, "fall": 1, "rise": 1},
                    "backends": [{"name": "pacs-a", "dicom": a.address}],
                }
            },
            "routes": [{"name": "all", "pool": "only"}],
        }
    )
    a.close()
    wait_until(lambda: not lb.backend("pacs-a").health.up, timeout=5)
    files = write_series(next(iter(make_studies([("CT", 1)]).values())), tmp_path / "s")
    result = storescu("127.0.0.1", lb.port, files, aec="DICOMLB")
    assert result.returncode != 0
    # DCMTK prints the A-ASSOCIATE-RJ: transient, service-provider (presentation), congestion
    assert "Association Rejected" in result.stderr + result.stdout
    assert "Transient" in result.stderr + result.stdout
