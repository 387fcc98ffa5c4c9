"""A backend that takes one association at a time (DCMTK `storescp` without `--fork`, many
modalities' and older archives' SCPs) works through dicomlb with default settings, as it does
behind HAProxy: dicomlb's own idle associations and health checks never make it look down."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dicomdata import make_small, write_series
from tests.integration.conftest import Balancer
from tests.peers import StoreSCP, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

SENDERS = ("MODALITY_A", "MODALITY_B", "MODALITY_C")


def config(scp: StoreSCP, **pool: Any) -> dict[str, Any]:
    """Defaults everywhere, but a health check every second."""
    return {
        "pools": {
            "archive": {
                "health": {"interval": "1s"},
                "backends": [{"name": "scp", "dicom": scp.address}],
                **pool,
            }
        },
        "routes": [{"name": "all", "pool": "archive"}],
    }


def three_senders(lb: Balancer, tmp_path: Path, scp: StoreSCP) -> None:
    """Three modalities with their own AE titles send back to back, with health checks between
    them: every image Success at the backend, and the backend never marked down."""
    down: list[str] = []
    sent = 0
    time.sleep(1.5)  # a check or two before the first sender
    for n, aet in enumerate(SENDERS):
        files = write_series(make_small(2), tmp_path / aet)
        result = storescu("127.0.0.1", lb.port, files, aet=aet, aec="DICOMLB", timeout=60)
        assert result.returncode == 0, f"{aet}: {result.stdout}{result.stderr}"
        sent += len(files)
        if not lb.backend("scp").health.up:
            down.append(aet)
        if n < len(SENDERS) - 1:
            time.sleep(1.5)  # the next check runs while the last sender's association idles
    assert len(scp.wait_files(sent)) == sent
    assert down == [], f"backend marked down after {down}"
    assert lb.backend("scp").health.up
    assert lb.backend("scp").health.failures == 0


def test_one_association_backend_with_defaults(tmp_path: Path, balancer: Any) -> None:
    with StoreSCP("ONEATATIME", tmp_path / "scp") as scp:
        three_senders(balancer(config(scp)), tmp_path, scp)


def test_one_association_backend_with_max_associations_1(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Told the limit, dicomlb never waits on its own association: nothing to learn."""
    with StoreSCP("ONEATATIME", tmp_path / "scp") as scp:
        cfg = config(scp)
        cfg["pools"]["archive"]["backends"][0]["max_associations"] = 1
        lb = balancer(cfg)
        three_senders(lb, tmp_path, scp)
        # The last sender's association idles (15 s): the checks take its slot, not a second
        # association the backend would leave unanswered (fall 3 x 3 s would be down).
        quiet_until = time.monotonic() + 10
        while time.monotonic() < quiet_until:
            assert lb.backend("scp").health.failures == 0, caplog.text[-2000:]
            time.sleep(0.1)
        assert lb.backend("scp").health.up
    assert "upstream.capacity" not in caplog.text


def test_one_association_backend_per_client(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dicomlb.dicom.upstream")
    with StoreSCP("ONEATATIME", tmp_path / "scp") as scp:
        lb = balancer(config(scp, upstream="per_client"))
        three_senders(lb, tmp_path, scp)
        # Nothing kept idle: every upstream association went with its client's.
        assert lb.call(idle_count(lb)) == 0
    # One backend association per client association, for both of its images (besides the
    # one that asked, before the client was answered, what the backend takes).
    for aet in SENDERS:
        opened = caplog.text.count(f"upstream.associated backend=scp calling_aet={aet}\n")
        asked = caplog.text.count(f"contexts.asked backend=scp calling_aet={aet} ")
        assert opened - asked == 1


def test_the_wait_is_paid_once(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Without checks, the second sender finds the first one's association idle and waits
    for connect_timeout once; dicomlb then keeps to one association, so the third does not
    wait at all."""
    with StoreSCP("ONEATATIME", tmp_path / "scp") as scp:
        lb = balancer(config(scp, health={"enabled": False}, connect_timeout="2s"))
        took = []
        for aet in SENDERS:
            files = write_series(make_small(1), tmp_path / aet)
            started = time.monotonic()
            result = storescu("127.0.0.1", lb.port, files, aet=aet, aec="DICOMLB", timeout=60)
            took.append(time.monotonic() - started)
            assert result.returncode == 0, f"{aet}: {result.stdout}{result.stderr}"
        assert len(scp.wait_files(3)) == 3
    assert caplog.text.count("upstream.capacity backend=scp limit=1 configured=4") == 1
    assert took[1] >= 2.0  # the one wait: connect_timeout
    assert took[2] < 2.0, took
    assert lb.backend("scp").health.up


async def idle_count(lb: Balancer) -> int:
    return len(lb.app.runtime.upstreams["scp"].idle)
