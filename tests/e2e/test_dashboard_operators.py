"""What an operator needs from the dashboard, in real headless Chromium (Debian `chromium`,
playwright): recent errors that say what failed and why; a page laid out for what the config
balances (DICOM, HTTP or both); a user / password sign-in when the admin listener takes basic
auth; SOP classes by name and route matches as written; no failed request in the console.
Screenshots are saved under each test's tmp_path (printed)."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

from dicomlb.config import hash_secret
from tests.dicomdata import make_small, write_series
from tests.e2e.test_dashboard import pytestmark  # noqa: F401  (the same skips)
from tests.httppeers import HttpBalancer, WebBackend
from tests.integration.test_admin_errors import CT, dicom_config
from tests.integration.test_spool import RefusingBackend
from tests.peers import LOOPBACK, StoreSCP, free_port, storescu


class Console:
    """Every console error and every failed request of a page, from its first load."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on(
            "console",
            lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        page.on(
            "response",
            lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )


def screenshot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"dashboard screenshot: {path}")


def test_errors_sop_class_names_and_a_dicom_only_page(
    tmp_path: Path, balancer: Any, page: Any
) -> None:
    scp = StoreSCP("PACSA", tmp_path / "a", fork=True).start()
    refusing = RefusingBackend()
    try:
        config = dicom_config(scp, refusing)
        config["listeners"]["dicom"]["ae_title"] = "DICOMLB"
        lb = balancer(config, admin=True)
        console = Console(page)
        page.goto(lb.admin_url + "/")
        page.locator('tr[data-backend="pacs-a"] .state').filter(has_text="up").wait_for()
        # nothing failed yet: the list says so
        assert page.locator("#errors").inner_text().strip() == "none"

        refused = write_series(make_small(1, patient_id="REFUSE"), tmp_path / "refused")
        assert storescu(LOOPBACK, lb.port, refused, aec="DICOMLB").returncode != 0
        assert storescu(LOOPBACK, lb.port, refused, aet="CT_9", aec="WRONG").returncode != 0
        scp.stop()

        failed = page.locator('#errors tr[data-kind="store.failed"]')
        failed.wait_for(timeout=10_000)
        assert "refusing-a" in failed.inner_text() and "OUT_OF_RESOURCES" in failed.inner_text()
        rejected = page.locator('#errors tr[data-kind="association.rejected"]')
        rejected.wait_for(timeout=10_000)
        assert "CT_9" in rejected.inner_text() and "peer=127.0.0.1:" in rejected.inner_text()
        down = page.locator('#errors tr[data-kind="backend.down"]')
        down.first.wait_for(timeout=10_000)
        assert "pacs-a" in down.first.inner_text()
        # the red "failed" tile has its explanation next to it
        assert page.locator(".tile", has_text="failed").locator(".v").inner_text() == "1"

        # routes: as written (a keyword stays a keyword), a UID with its SOP class's name
        assert page.locator('tr[data-route="refused-ct"] .match').inner_text() == (
            "sop_class = CTImageStorage and PatientID = REFUSE"
        )
        assert page.locator('tr[data-route="ct"] .match').inner_text() == (
            f"sop_class = {CT} (CT Image Storage)"
        )

        # DICOM only: no HTTP panel, no HTTP tile
        for section in ("#http-routes-section", "#http-backends-section", "#http-recent-section"):
            assert not page.locator(section).is_visible(), section
        assert page.locator("#routes-section").is_visible()
        assert not page.locator(".tile", has_text="HTTP").count()
        screenshot(page, tmp_path / "dashboard-errors.png")
        assert console.problems == []
    finally:
        scp.close()
        refusing.close()


def test_an_http_only_configuration_gets_an_http_first_page(tmp_path: Path, page: Any) -> None:
    web = WebBackend("web-1").start()
    config = {
        "listeners": {"admin": {"bind": f"{LOOPBACK}:{free_port()}"}},
        "pools": {
            "web": {"health": {"enabled": False}, "backends": [{"name": "web-1", "http": web.url}]}
        },
        "http_routes": [{"name": "app", "match": {"path_prefix": "/status/"}, "pool": "web"}],
    }
    try:
        with HttpBalancer(config) as lb:
            assert lb.app.admin is not None
            console = Console(page)
            page.goto(lb.app.admin.url)
            page.locator('tr[data-http-backend="web-1"]').wait_for(timeout=10_000)
            for status in (200, 500):
                conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)
                conn.request("GET", f"/status/{status}")
                conn.getresponse().read()
                conn.close()
            error = page.locator('#errors tr[data-kind="http.5xx"]')
            error.wait_for(timeout=10_000)
            assert "GET /status/500 answered 500 (backend web-1)" in error.inner_text()
            page.locator(".tile", has_text="HTTP 5xx").locator(".v").filter(has_text="1").wait_for()

            # HTTP first: its tiles lead, its panels come before the backends table, the
            # chart counts requests; no DICOM tile, route table or association list
            assert page.locator(".tile .k").first.inner_text() == "HTTP connections"
            assert "HTTP requests/s" in page.locator("#spark-title").text_content()
            for gone in ("#routes-section", "#active-section", "#recent-section"):
                assert not page.locator(gone).is_visible(), gone
            assert not page.locator(".tile", has_text="images/s").count()
            assert not page.locator('#backends th:has-text("img/s")').is_visible()
            top = {
                name: page.locator(name).bounding_box()["y"]
                for name in ("#http-routes-section", "#backends")
            }
            assert top["#http-routes-section"] < top["#backends"], top
            assert (
                page.locator('tr[data-http-route="app"]')
                .inner_text()
                .count("path_prefix: /status/")
            )
            screenshot(page, tmp_path / "dashboard-http.png")
            assert console.problems == []
    finally:
        web.stop()


def test_basic_auth_sign_in_and_a_mixed_page(tmp_path: Path, balancer: Any, page: Any) -> None:
    scp = StoreSCP("PACSA", tmp_path / "a", fork=True).start()
    web = WebBackend("web-1").start()
    try:
        config = {
            "listeners": {
                "http": {"bind": f"{LOOPBACK}:{free_port()}"},
                "admin": {"auth": {"basic": {"ops": hash_secret("s3cret pässword")}}},
            },
            "pools": {
                "pacs": {"backends": [{"name": "pacs-a", "dicom": scp.address}]},
                "web": {"backends": [{"name": "web-1", "http": web.url}]},
            },
            "routes": [{"name": "all", "pool": "pacs"}],
            "http_routes": [{"name": "app", "pool": "web"}],
        }
        lb = balancer(config, admin=True)
        console = Console(page)
        page.goto(lb.admin_url + "/")
        # the page's own form, not the browser's dialog (which never answers headless)
        page.locator("#user").wait_for(state="visible", timeout=10_000)
        assert page.locator("#password").is_visible()
        screenshot(page, tmp_path / "dashboard-sign-in.png")
        page.fill("#user", "ops")
        page.fill("#password", "wrong")
        page.click("#sign-in")
        page.locator("#conn").filter(has_text="sign-in refused").wait_for(timeout=10_000)
        page.fill("#user", "ops")
        page.fill("#password", "s3cret pässword")
        page.click("#sign-in")
        page.locator('tr[data-backend="pacs-a"]').wait_for(timeout=10_000)
        page.locator("#conn").filter(has_text="updated").wait_for(timeout=10_000)
        assert not page.locator("#login").is_visible()

        # mixed: both kinds of panels and tiles
        for shown in ("#routes-section", "#http-routes-section", "#active-section"):
            assert page.locator(shown).is_visible(), shown
        assert page.locator(".tile", has_text="images/s").count() == 1
        assert page.locator(".tile", has_text="HTTP req/s").count() == 1
        screenshot(page, tmp_path / "dashboard-mixed.png")
        # the refusals before signing in (Chromium logs each 401 twice); nothing else
        refusals = [p for p in console.problems if "401" in p]
        assert refusals and [p for p in console.problems if p not in refusals] == []
        assert all("/api/v1/status" in p for p in refusals if p.startswith("401 "))
    finally:
        scp.close()
        web.stop()
