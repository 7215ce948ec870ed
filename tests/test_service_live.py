"""A real uvicorn process on 127.0.0.1: concurrent /sample during publications, client, CLI."""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.client import AEOTClient, AEOTError
from service.job_config import job_config
from service.store import ModelStore
from tests.service_helpers import (
    API_KEY,
    child_commands,
    copy_store,
    fitted_template,
    live_server,
    make_settings,
    write_bundle,
)

N, SEED = 64, 11
REQUESTS = 240
THREADS = 16


def _expected(store: ModelStore, version: int) -> np.ndarray:
    potential = store.potential("tiny", version, backend="torch")
    return np.asarray(potential.extended_map.sample(N, seed=SEED, extended=True), np.float32)


@pytest.mark.slow
def test_concurrent_samples_during_publications_are_each_one_version(tmp_path):
    settings = make_settings(
        tmp_path / "store",
        worker=True,
        target_l1=0.03,
        publish_interval=0.2,
        checkpoint_every=5,
    )
    store = ModelStore(settings.store)
    store.register("tiny", write_bundle(tmp_path / "b", n=200, d=4), fit=job_config(settings))
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        deadline = time.monotonic() + 90
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "no potential published in 90 s"
            time.sleep(0.1)

        def one(_: int) -> tuple[int, int, bytes]:
            r = http.get("/sample", params={"n": N, "seed": SEED, "format": "npy"})
            return r.status_code, int(r.headers.get("X-Potential-Version", -1)), r.content

        # Batches of concurrent requests until a publication lands among them (bounded: the
        # fit publishes every 0.2 s, but a loaded box may delay one past a single batch).
        results: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(THREADS) as pool:
            while len({v for _, v, _ in results}) < 2 and time.monotonic() < deadline:
                results += pool.map(one, range(REQUESTS))
        status = http.get("/models/tiny").json()
    assert [s for s, _, _ in results if s != 200] == []
    versions = sorted({v for _, v, _ in results})
    assert len(versions) >= 2, f"the worker published no new version during the run: {versions}"
    expected = {v: _expected(store, v) for v in versions}
    for _, version, body in results:
        np.testing.assert_array_equal(np.load(io.BytesIO(body)), expected[version])
    assert status["published_version"] >= versions[-1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A server of two web processes and one fit worker on a fitted store, once per module."""
    root = tmp_path_factory.mktemp("two-processes")
    store = copy_store(fitted_template(tmp_path_factory.getbasetemp()), root / "store")
    settings = make_settings(store.root, worker=True, web_workers=2)
    procs: list[subprocess.Popen[bytes]] = []
    with live_server(settings, procs=procs) as url:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready in 60 s"
            time.sleep(0.2)
        yield url, procs


def _sample_count(url: str) -> float:
    """Successful GET /sample requests so far, summed over the server's processes."""
    text = httpx.get(f"{url}/metrics").text
    found = re.search(
        r'^aeot_request_seconds_count\{method="GET",route="/sample",status="200"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_sync_client_and_cli_against_a_live_server(two_processes, tmp_path):
    url, _ = two_processes
    with AEOTClient(url, api_key=API_KEY) as client:
        client.wait_ready(timeout=30)
        assert client.ready()
        sample = client.sample_with_version(10, seed=2)
        assert sample.latents.shape == (10, 4) and sample.model == "tiny"
        np.testing.assert_array_equal(client.sample(10, seed=2), sample.latents)
        grid = client.sample_images(4, seed=2)
        assert isinstance(grid, Image.Image) and grid.size[0] > 16
        path = client.interpolate(np.full(4, -0.3), np.full(4, 0.3), steps=5)
        assert path.latents.shape == (5, 4) and path.strip is not None
        assert client.singularities(limit=3)["n_pairs"] > 0
        assert client.models()["default_model"] == "tiny"
        assert client.model("tiny")["ready"] is True
        try:
            client.sample(10, model="nosuch")
        except AEOTError as exc:
            assert exc.status_code == 404 and "nosuch" in exc.detail
        else:
            raise AssertionError("unknown model did not raise")
        out = tmp_path / "cli.png"
        runner = CliRunner()
        run = runner.invoke(cli_app, ["sample", str(out), "--n", "9", "--url", url])
        assert run.exit_code == 0, run.output
        assert Image.open(out).size[0] > 8
        strip = tmp_path / "s.png"
        run = runner.invoke(cli_app, ["interpolate", "0", "5", "--out", str(strip), "--url", url])
        assert run.exit_code == 0 and "frames" in run.output, run.output
        assert strip.exists()
        run = runner.invoke(cli_app, ["singularities", "--limit", "2", "--url", url])
        assert run.exit_code == 0 and "adjacent pairs singular" in run.output, run.output


@pytest.mark.slow
def test_two_server_processes_share_one_store_one_worker_and_their_metrics(two_processes):
    url, procs = two_processes
    children = child_commands(procs[0].pid)
    assert sum("service.worker" in c for c in children) == 1, children  # one fit worker
    assert sum("spawn_main" in c for c in children) == 2, children  # two servers
    before = _sample_count(url)

    def one(k: int) -> tuple[int, bytes]:
        # A new connection per request, so the kernel spreads them over both processes.
        r = httpx.get(f"{url}/sample", params={"n": 8, "seed": k % 3, "format": "npy"})
        return r.status_code, r.content

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(60)))
    assert [s for s, _ in results if s != 200] == []
    for k, (_, body) in enumerate(results):
        assert body == results[k % 3][1]  # same seed, same bytes, whichever process
    # Each scrape lands on either process and sums both processes' samples.
    for _ in range(4):
        assert _sample_count(url) == before + 60
