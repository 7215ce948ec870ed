"""The web page in real headless Chromium (Playwright) against a live server.

Skips without chromium or playwright, except under ``CI=true``, where a missing browser fails:
CI installs both (``.ci/run``), so a skip there would hide an untested page. Screenshots at
400, 1,000 and 1,280 px go to ``AEOT_SCREENSHOTS`` (a directory) when set, else to the test's
temporary directory.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service_helpers import (
    LABELLED_NAMES,
    copy_store,
    labelled_template,
    live_server,
    make_settings,
)

IN_CI = os.environ.get("CI", "").lower() == "true"
if IN_CI:
    from playwright import sync_api  # CI must have it: an ImportError fails the run
else:
    sync_api = pytest.importorskip("playwright.sync_api")
# AEOT_TEST_CHROMIUM points the test at another binary (a test may hide the browser).
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
WAIT_MS = 20000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (each test opens its own page and context).

    Skips without Chromium, or fails under CI, where ``.ci/run`` installs it.
    """
    if not HAVE_CHROMIUM:
        if IN_CI:
            pytest.fail("CI=true but no chromium: .ci/run installs Debian's chromium package")
        pytest.skip("needs chromium (Debian package chromium)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _image_loaded(selector: str) -> str:
    return (
        f"() => {{ const i = document.querySelector('{selector}');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )


def _screens_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("AEOT_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _red_gap_columns(page) -> int:
    """Columns of the interpolation strip that are entirely the crossing red."""
    return page.evaluate(
        """() => {
          const img = document.querySelector('#strip img');
          const c = document.createElement('canvas');
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const g = c.getContext('2d'); g.drawImage(img, 0, 0);
          const d = g.getImageData(0, 0, c.width, c.height).data;
          let cols = 0;
          for (let x = 0; x < c.width; x++) {
            let red = true;
            for (let y = 0; y < c.height && red; y++) {
              const k = 4 * (y * c.width + x);
              red = d[k] === 220 && d[k + 1] === 38 && d[k + 2] === 38;
            }
            cols += red;
          }
          return cols;
        }"""
    )


def _check_ready(page, url: str) -> None:
    page.wait_for_selector("#ready.ready", timeout=WAIT_MS)
    for selector in ("#gallery img", "#strip img", "#singular-picture"):
        page.wait_for_function(_image_loaded(selector), timeout=WAIT_MS)
    badge = page.inner_text("#ready")
    assert badge.startswith("ready · v") and "L1 0." in badge
    row = page.inner_text("#progress tbody tr[data-model='lab']")
    assert "lab" in row and "done" in row
    assert float(page.inner_text("#threshold")) > 0
    # The page shows the served singular set: the same count the API reports.
    summary = httpx.get(f"{url}/singularities", params={"limit": 0}, timeout=30).json()
    assert int(page.inner_text("#n-singular")) == summary["n_singular"]
    assert page.locator("#singular-pairs figure img").count() >= 1


def _check_no_overflow(page, width: int) -> None:
    """Nothing is wider than the viewport, and nothing needs a scroll bar inside its section."""
    page_width = page.evaluate("() => document.documentElement.scrollWidth")
    assert page_width <= width, f"the page is {page_width} px wide at a {width} px viewport"
    cut = page.evaluate(
        """() => [...document.querySelectorAll('section, section *')]
          .filter((e) => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1
                         && getComputedStyle(e).overflowX !== 'visible')
          .map((e) => `${e.tagName}#${e.id}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`)"""
    )
    assert cut == [], f"at {width} px these scroll sideways: {cut}"
    # Every picture fits its section (a cut strip or figure is cut, scroll bar or not).
    wide = page.evaluate(
        """() => [...document.querySelectorAll('section img')]
          .filter((i) => i.offsetParent !== null
                         && i.getBoundingClientRect().right
                            > i.closest('section').getBoundingClientRect().right + 1)
          .map((i) => i.alt)"""
    )
    assert wide == [], f"at {width} px these pictures stick out of their section: {wide}"


def _check_badge_states(page) -> None:
    """The badge's text for states a fitted store cannot show live, in the API's shapes."""
    train = {
        "kind": "train",
        "model": "mnist",
        "status": "running",
        "training": {"epoch": 3, "epochs": 20, "phase": "joint", "loss": 0.0123},
    }
    fit = {"kind": "fit", "status": "running", "accuracy": {"l1": 0.18}, "target_l1": 0.03}
    cases = [
        ([None, [train]], ["waiting", "training mnist · epoch 3/20 · loss 0.01230"]),
        (
            [{"ready": False, "job": {**fit, "eta": 42}}, []],
            ["waiting", "fitting · L1 0.180 → 0.030 · ETA 42 s"],
        ),
        (
            [
                {
                    "ready": True,
                    "served_version": 5,
                    "served_accuracy": {"l1": 0.037},
                    "accuracy": {"l1": 0.037},
                    "job": {**fit, "eta": None},
                },
                [],
            ],
            ["ready", "ready · v5 · L1 0.037 · refitting (L1 0.180 → 0.030 · ETA –)"],
        ),
    ]
    for args, expected in cases:
        assert page.evaluate("(a) => badgeFor(a[0], a[1])", args) == expected


def _check_seed_count_class(page) -> None:
    first = page.get_attribute("#gallery img", "src")
    page.fill("#count", "9")
    page.fill("#seed", "17")
    page.press("#seed", "Enter")
    page.wait_for_function(
        "(old) => document.querySelector('#gallery img').getAttribute('src') !== old",
        arg=first,
        timeout=WAIT_MS,
    )
    src = page.get_attribute("#gallery img", "src")
    assert "seed=17" in src and "n=9" in src
    page.click("#resample")
    page.wait_for_function(
        "(old) => document.querySelector('#gallery img').getAttribute('src') !== old",
        arg=src,
        timeout=WAIT_MS,
    )
    assert page.input_value("#seed") != "18"  # a drawn seed, not typed + 1
    assert page.is_visible("#class-control")
    shown = [f"{c} {name}" for c, name in enumerate(LABELLED_NAMES)]
    assert page.locator("#label option").all_inner_texts() == ["any", *shown]
    page.select_option("#label", "2")
    page.wait_for_function(
        "() => document.querySelector('#gallery img').getAttribute('src').includes('label=2')",
        timeout=WAIT_MS,
    )
    page.wait_for_function(_image_loaded("#gallery img"), timeout=WAIT_MS)


def _check_downloads(page, tmp_path: Path) -> None:
    with page.expect_download() as info:
        page.click("#download-png")
    png = tmp_path / info.value.suggested_filename
    info.value.save_as(png)
    assert png.suffix == ".png" and Image.open(png).format == "PNG"
    with page.expect_download() as info:
        page.click("#download-npy")
    npy = tmp_path / info.value.suggested_filename
    info.value.save_as(npy)
    latents = np.load(io.BytesIO(npy.read_bytes()), allow_pickle=False)
    assert npy.suffix == ".npy" and latents.shape == (9, 3)


def _check_crossings(page) -> None:
    # Codes 0 and 30 lie in different clusters: the segment crosses a singular facet.
    page.fill("#from", "0")
    page.fill("#to", "30")
    page.press("#to", "Enter")
    page.wait_for_function(
        "() => document.querySelectorAll('#strip .crossing').length > 0", timeout=WAIT_MS
    )
    marks = page.locator("#strip .crossing").count()
    text = page.inner_text("#crossing-list")
    assert text.startswith(f"{marks} singular crossing(s)")
    assert _red_gap_columns(page) >= 6  # at least one full bar of STRIP_PAD = 6 columns


@pytest.mark.slow
def test_page_end_to_end(browser, tmp_path_factory, tmp_path):
    store = copy_store(labelled_template(tmp_path_factory.getbasetemp()), tmp_path / "store")
    procs: list[subprocess.Popen[bytes]] = []
    settings = make_settings(store.root, default_model="lab")
    screens = _screens_dir(tmp_path)
    with live_server(settings, procs=procs) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        try:
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            _check_ready(page, url)
            _check_badge_states(page)
            # A hidden picture stays hidden (no broken-image box while a model trains), whatever
            # display the style sheet gives it.
            assert (
                page.evaluate(
                    "() => { const i = document.querySelector('#singular-picture');"
                    " i.hidden = true; const d = getComputedStyle(i).display; i.hidden = false;"
                    " return d; }"
                )
                == "none"
            )
            _check_seed_count_class(page)
            _check_downloads(page, tmp_path)
            _check_crossings(page)
            page.fill("#seed", "2147483647")  # the widest seed the dice can draw
            for width in (1280, 1000, 400):
                page.set_viewport_size({"width": width, "height": 900})
                page.wait_for_timeout(300)
                shot = screens / f"page-{width}.png"
                page.screenshot(path=str(shot), full_page=True)
                _check_no_overflow(page, width)
                assert Image.open(shot).size[0] == width
            procs[0].terminate()  # the server goes away: the badge must say so
            procs[0].wait(timeout=30)
            page.wait_for_selector("#ready.down", timeout=WAIT_MS)
            assert page.inner_text("#ready") == "server unreachable"
            assert errors == []
        finally:
            page.close()


@pytest.mark.slow
def test_api_docs_render_without_the_internet(browser, tmp_path):
    """Swagger UI and ReDoc draw the API from the server's own assets; nothing else is asked."""
    with live_server(make_settings(tmp_path / "store")) as url:
        page = browser.new_page()
        try:
            requested: list[str] = []
            blocked: dict[str, str | None] = {}
            page.on("request", lambda req: requested.append(req.url))
            page.on("requestfailed", lambda req: blocked.update({req.url: req.failure}))
            page.goto(url + "/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=WAIT_MS)
            assert "AE-OT service" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".swagger-ui .authorize", timeout=WAIT_MS)  # X-API-Key
            assert page.locator(".opblock-summary-path[data-path='/sample']").count() == 2
            for path in ("/encode", "/decode", "/reconstruct"):  # once, under "autoencoder"
                assert page.locator(f".opblock-summary-path[data-path='{path}']").count() == 1
            page.goto(url + "/redoc")
            page.wait_for_selector("h1:has-text('AE-OT service')", timeout=WAIT_MS)
            local = (url, "data:", f"blob:{url}")
            outside = [u for u in requested if not u.startswith(local)]
            # ReDoc's bundle asks a CDN for its footer logo; the page's Content-Security-Policy
            # stops it in the browser, before any network access.
            assert all(blocked.get(u) == "csp" for u in outside), (outside, blocked)
        finally:
            page.close()
