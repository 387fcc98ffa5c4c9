"""Browser tests reuse the in-process balancer of the integration tests; `page` is a tab of
headless Debian Chromium driven by playwright (dialogs such as "drain backend?" accepted)."""

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import balancer  # noqa: F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept())  # confirm() dialogs
            yield page
        finally:
            browser.close()
