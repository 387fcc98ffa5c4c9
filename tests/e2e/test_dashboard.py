"""The dashboard in real headless Chromium (Debian `chromium`, driven by playwright).

It loads from the admin listener, shows the config's backends, shows one going down when its
storescp stops, and its Drain button drains a backend. A screenshot is saved under the
test's tmp_path (printed, and named in the assertion messages).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.dicomdata import make_small, write_series
from tests.e2e.conftest import CHROMIUM
from tests.peers import StoreSCP, have_dcmtk, storescu

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="needs playwright (pip install -e '.[test]'; no `playwright install` needed)",
    ),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="needs Chromium (apt-get install chromium)"
    ),
]


def test_dashboard_shows_backends_a_backend_going_down_and_drains(
    tmp_path: Path, balancer: Any, page: Any
) -> None:
    a = StoreSCP("PACSA", tmp_path / "a", fork=True).start()
    b = StoreSCP("PACSB", tmp_path / "b", fork=True).start()
    try:
        config = {
            "pools": {
                "main": {
                    "strategy": "affinity",
                    "health": {"interval": "0.2s", "timeout": "1s", "fall": 1, "rise": 1},
                    "backends": [
                        {"name": "pacs-a", "dicom": a.address},
                        {"name": "pacs-b", "dicom": b.address},
                    ],
                }
            },
            "routes": [{"name": "ct", "match": {"Modality": "CT"}, "pool": "main"}],
        }
        lb = balancer(config, admin=True)
        write_series(make_small(12), tmp_path / "out")
        assert storescu("127.0.0.1", lb.port, tmp_path / "out", aet="CT_1").returncode == 0

        page.goto(lb.admin_url + "/")
        state_a = page.locator('tr[data-backend="pacs-a"] .state')
        state_b = page.locator('tr[data-backend="pacs-b"] .state')
        state_a.filter(has_text="up").wait_for(timeout=10_000)
        state_b.filter(has_text="up").wait_for(timeout=10_000)
        page.locator('tr[data-route="ct"]').filter(has_text="12").wait_for(timeout=10_000)
        assert page.locator("#ready").inner_text() == "READY"

        a.stop()
        state_a.filter(has_text="down").wait_for(timeout=10_000)
        assert state_b.inner_text() == "up"

        page.click('tr[data-backend="pacs-b"] button[data-action="drain"]')
        state_b.filter(has_text="drained").wait_for(timeout=10_000)
        assert lb.backend("pacs-b").mode == "draining"
        assert not lb.backend("pacs-b").enabled
        page.locator("#ready").filter(has_text="NOT READY").wait_for(timeout=10_000)
        page.locator("#recent .s-released").first.wait_for(timeout=10_000)

        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"dashboard screenshot: {screenshot}")
        assert screenshot.stat().st_size > 10_000, screenshot
    finally:
        a.close()
        b.close()
