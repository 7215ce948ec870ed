"""`aeot serve` on an empty store: trains digits, fits, becomes ready, stops cleanly."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from service.store import ModelStore
from tests.service_helpers import live_server, make_settings


@pytest.mark.slow
def test_serve_with_no_model_trains_fits_and_serves_digits(tmp_path):
    settings = make_settings(
        tmp_path / "store",
        worker=True,
        embedded_default=True,
        default_model="digits",
        target_l1=0.05,
        publish_interval=5.0,
        checkpoint_every=5,
        poll_interval=0.5,
    )
    start = time.monotonic()
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/readyz").status_code == 503
        deadline = start + 170
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, http.get("/models").text
            time.sleep(0.25)
        seconds_to_ready = time.monotonic() - start
        status = http.get("/models/digits").json()
        png = http.get("/sample", params={"n": 16, "seed": 1, "format": "png"})
    assert status["n_latents"] == 1797 and status["ready"]
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size[0] >= 4 * 32
    print(f"ready after {seconds_to_ready:.0f} s")
    # Server shutdown sent SIGTERM to its worker: the fit checkpointed and was handed back.
    job = ModelStore(settings.store).queue.latest("digits")
    assert job.status in ("queued", "done")
    if job.status == "queued":
        assert job.reason == "worker stopped" and job.checkpoint_iteration == job.iteration
