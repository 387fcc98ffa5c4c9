"""The dashboard's spool and HTTP panels in real headless Chromium (Debian `chromium`, playwright).

A spooled route sends to a backend that refuses every C-STORE, so the instances become dead
letters; the page shows them with their reason; the backend is fixed (a storescp on the same
port) and a dead letter is retried from the page, then the rest with "Retry all dead". An
HTTP listener with two aiohttp backends fills the HTTP panels. Screenshots are saved under
the test's tmp_path (printed, and named in the assertion messages).
"""

from __future__ import annotations

import http.client
import sqlite3
from pathlib import Path
from typing import Any

from tests.dicomdata import make_small, write_series
from tests.e2e.test_dashboard import pytestmark  # noqa: F401  (the same skips)
from tests.httppeers import WebBackend
from tests.integration.test_spool import RefusingBackend
from tests.peers import LOOPBACK, StoreSCP, free_port, storescu


def test_spool_panel_shows_dead_letters_and_retries_one_from_the_page(
    tmp_path: Path, balancer: Any, page: Any
) -> None:
    refusing: RefusingBackend | None = RefusingBackend()
    assert refusing is not None
    port = refusing.port
    webs = [WebBackend(name).start() for name in ("viewer-1", "viewer-2")]
    good: StoreSCP | None = None
    try:
        http_port = free_port()
        config = {
            "listeners": {"http": {"bind": f"{LOOPBACK}:{http_port}"}},
            "pools": {
                "pacs": {
                    "health": {"enabled": False},
                    "idle_timeout": "0.2s",  # no reuse of the refusing association
                    "backends": [{"name": "pacs-a", "dicom": f"PACSA@127.0.0.1:{port}"}],
                },
                "viewers": {
                    "strategy": "round_robin",
                    "health": {"interval": "0.5s", "timeout": "1s"},
                    "backends": [{"name": w.name, "http": w.url} for w in webs],
                },
            },
            "routes": [{"name": "modalities", "pool": "pacs", "ack": "spool"}],
            "http_routes": [
                {"name": "dicomweb", "match": {"path_prefix": "/dicom-web/"}, "pool": "viewers"},
                {"name": "viewer", "pool": "viewers"},
            ],
            "spool": {
                "directory": str(tmp_path / "spool"),
                "min_free_disk": 0,
                "retry": {"base": "0.1s", "cap": "0.2s", "max_attempts": 2},
            },
        }
        lb = balancer(config, admin=True)
        files = write_series(make_small(4), tmp_path / "out")
        assert storescu("127.0.0.1", lb.port, files, aet="CT_1", aec="DICOMLB").returncode == 0
        conn = http.client.HTTPConnection(LOOPBACK, http_port, timeout=10)
        for n in range(12):
            conn.request("GET", f"/dicom-web/studies/{n}" if n % 3 else f"/app/{n}")
            conn.getresponse().read()
        conn.close()

        page.goto(lb.admin_url + "/")
        dead_rows = page.locator("#dead tr[data-item]")
        page.locator("#spool-section").wait_for(state="visible", timeout=10_000)
        page.wait_for_function(
            "document.querySelectorAll('#dead tr[data-item]').length === 4", timeout=20_000
        )
        assert "0xA700" in dead_rows.first.locator(".reason").inner_text()
        assert "max_attempts 2" in dead_rows.first.locator(".reason").inner_text()
        sop_class = dead_rows.first.locator(".sop-class")
        assert sop_class.inner_text() == "CT Image Storage"
        assert sop_class.get_attribute("title") == "1.2.840.10008.5.1.4.1.1.2"
        # each dead letter is a recent error of its own, naming its instance
        dead_errors = page.locator('#errors tr[data-kind="spool.dead"]')
        assert dead_errors.count() == 4
        assert "max_attempts 2" in dead_errors.first.inner_text()
        page.locator('tr[data-spool-backend="pacs-a"]').filter(has_text="4").wait_for()
        page.locator('tr[data-http-route="dicomweb"]').filter(has_text="8").wait_for()
        page.locator('tr[data-http-backend="viewer-1"] .badge').filter(has_text="up").wait_for()
        assert page.locator("#spool-accepting").inner_text() == "accepting"

        shot = tmp_path / "dashboard-spool-dead.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot (dead letters): {shot}")
        assert shot.stat().st_size > 10_000, shot

        refusing.close()
        refusing = None
        good = StoreSCP("PACSA", tmp_path / "a", port=port).start()
        first = dead_rows.first.get_attribute("data-item")
        page.click(f'#dead tr[data-item="{first}"] button[data-spool="retry"]')
        page.wait_for_function(
            "document.querySelectorAll('#dead tr[data-item]').length === 3", timeout=20_000
        )
        assert len(good.files()) == 1 or _wait_files(good, 1)
        assert page.locator(f'#dead tr[data-item="{first}"]').count() == 0

        page.click("#retry-dead")  # confirm() is accepted by the fixture
        page.locator("#dead").filter(has_text="no dead letters").wait_for(timeout=20_000)
        assert _wait_files(good, 4)
        page.locator('tr[data-spool-backend="pacs-a"]').filter(has_text="4").wait_for()
        assert lb.http("GET", "/api/v1/spool")[1]["by_state"]["delivered"] == 4

        shot = tmp_path / "dashboard-spool.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot (retried): {shot}")
        assert shot.stat().st_size > 10_000, shot
    finally:
        if refusing is not None:
            refusing.close()
        if good is not None:
            good.close()
        for w in webs:
            w.stop()


def _wait_files(scp: StoreSCP, count: int, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(scp.files()) == count:
            return True
        time.sleep(0.05)
    return len(scp.files()) == count


def test_spool_panel_shows_a_restarting_dispatcher_with_its_cause(
    tmp_path: Path, balancer: Any, page: Any
) -> None:
    """The feeder's claims fail as on a full disk: the badge turns to 'dispatcher
    restarting', with the task and the cause in its title."""
    good = StoreSCP("PACSA", tmp_path / "a").start()
    try:
        config = {
            "pools": {
                "pacs": {
                    "health": {"enabled": False},
                    "backends": [{"name": "pacs-a", "dicom": good.address}],
                }
            },
            "routes": [{"name": "modalities", "pool": "pacs", "ack": "spool"}],
            "spool": {"directory": str(tmp_path / "spool"), "min_free_disk": 0},
        }
        lb = balancer(config, admin=True)
        page.goto(lb.admin_url + "/")
        badge = page.locator("#spool-dispatcher")
        badge.filter(has_text="dispatcher running").wait_for(timeout=10_000)

        store = lb.app.spool.store
        real_claim = store.claim

        def full_disk(*args: Any) -> Any:
            raise sqlite3.OperationalError("database or disk is full")

        store.claim = full_disk
        files = write_series(make_small(3), tmp_path / "out")
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
        badge.filter(has_text="dispatcher restarting").wait_for(timeout=10_000)
        title = badge.get_attribute("title") or ""
        assert "feeder/pacs-a" in title and "database or disk is full" in title, title
        shot = tmp_path / "dashboard-spool-restarting.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot (dispatcher restarting): {shot}")

        store.claim = real_claim
        assert _wait_files(good, 3)
    finally:
        good.close()
