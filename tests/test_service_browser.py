"""The web page in real headless Chromium (Playwright).

Skips without chromium or playwright, except under ``CI=true`` where a missing browser fails:
CI installs both (``.ci/run``), so a skip there would hide an untested page.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.service_helpers import copy_store, fitted_template, live_server, make_settings

IN_CI = os.environ.get("CI", "").lower() == "true"
if IN_CI:
    from playwright import sync_api  # CI must have it: an ImportError fails the run
else:
    sync_api = pytest.importorskip("playwright.sync_api")
# AEOT_TEST_CHROMIUM points the test at another binary (tests/test_install.py hides it).
CHROMIUM = os.environ.get("AEOT_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAVE_CHROMIUM = Path(CHROMIUM).exists() or (
    "AEOT_TEST_CHROMIUM" not in os.environ and shutil.which("chromium") is not None
)


@pytest.fixture(autouse=True)
def _chromium() -> None:
    """Skip without Chromium, or fail under CI, where ``.ci/run`` installs it."""
    if not HAVE_CHROMIUM:
        if IN_CI:
            pytest.fail("CI=true but no chromium: .ci/run installs Debian's chromium package")
        pytest.skip("needs chromium (Debian package chromium)")


def test_page_shows_gallery_interpolation_singularities_and_progress(tmp_path_factory, tmp_path):
    store = copy_store(fitted_template(tmp_path_factory.getbasetemp()), tmp_path / "store")
    with live_server(make_settings(store.root)) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_selector("#ready.ready", timeout=20000)
            page.wait_for_function(
                "() => { const i = document.querySelector('#gallery img');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=20000,
            )
            page.wait_for_function(
                "() => { const i = document.querySelector('#strip img');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=20000,
            )
            page.wait_for_selector("#threshold", timeout=20000)
            assert "v" in page.inner_text("#ready")
            row = page.inner_text("#progress tbody tr[data-model='tiny']")
            assert "tiny" in row and "done" in row
            assert float(page.inner_text("#threshold")) > 0
            # The page shows the served singular set: the same count the API reports.
            summary = httpx.get(f"{url}/singularities", params={"limit": 0}, timeout=30).json()
            assert int(page.inner_text("#n-singular")) == summary["n_singular"]
            crossings_text = page.inner_text("#crossing-list")
            marks = page.locator("#strip .crossing").count()
            assert ("no singular crossing" in crossings_text) == (marks == 0)
            first = page.get_attribute("#gallery img", "src")
            page.click("#resample")
            page.wait_for_function(
                "(old) => document.querySelector('#gallery img').getAttribute('src') !== old",
                arg=first,
                timeout=20000,
            )
            assert "seed=1" in page.get_attribute("#gallery img", "src")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert (tmp_path / "page.png").stat().st_size > 1000
            assert errors == []
        finally:
            browser.close()
