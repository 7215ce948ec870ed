"""The HTTP API through httpx against the ASGI app: endpoints, formats, reproducibility, keys."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.client import AEOTClient, AsyncAEOTClient
from solver import ClusterShare
from tests.service_helpers import (
    API_KEY,
    bundle_archive,
    copy_store,
    fitted_template,
    make_settings,
    write_bundle,
)


@pytest.fixture
def store(tmp_path_factory, tmp_path):
    return copy_store(fitted_template(tmp_path_factory.getbasetemp()), tmp_path / "store")


@pytest.fixture
def client(store):
    app = create_app(make_settings(store.root), store=store)
    with TestClient(app) as c:
        yield c


def test_health_ready_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    listing = client.get("/models").json()
    assert listing["default_model"] == "tiny"
    (model,) = listing["models"]
    assert model["ready"] and model["served_version"] == model["published_version"] >= 1
    status = client.get("/models/tiny").json()
    job = status["job"]
    assert job["status"] == "done" and job["iteration"] > 0
    assert job["accuracy"]["l1"] <= 0.1 and job["accuracy"]["empty_cells"] == 0


def test_sample_formats_agree_and_are_reproducible(client):
    a = client.get("/sample", params={"n": 16, "seed": 3})
    b = client.post("/sample", json={"n": 16, "seed": 3})
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json()
    assert a.headers["X-Potential-Version"] == a.json()["version"].__str__()
    latents = np.asarray(a.json()["latents"], np.float32)
    assert latents.shape == (16, 4) and np.isfinite(latents).all()
    npy = client.get("/sample", params={"n": 16, "seed": 3, "format": "npy"})
    assert npy.headers["content-type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), latents)
    other = np.asarray(client.get("/sample", params={"n": 16, "seed": 4}).json()["latents"])
    assert not np.allclose(other, latents)
    png = client.get("/sample", params={"n": 9, "seed": 3, "format": "png"})
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size[0] > 3 * 8


def test_sample_pages_from_offsets_concatenate_to_one_answer(client):
    whole = client.get("/sample", params={"n": 30, "seed": 3, "format": "npy"})
    pages = [
        client.get("/sample", params={"n": n, "seed": 3, "offset": offset, "format": "npy"})
        for offset, n in ((0, 12), (12, 12), (24, 6))
    ]
    joined = np.concatenate([np.load(io.BytesIO(p.content)) for p in pages])
    np.testing.assert_array_equal(joined, np.load(io.BytesIO(whole.content)))
    posted = client.post("/sample", json={"n": 6, "seed": 3, "offset": 24}).json()
    assert posted["offset"] == 24 and posted["seed"] == 3
    np.testing.assert_array_equal(np.asarray(posted["latents"], np.float32), joined[24:])
    for bad in (-1, 2**24 + 1):
        r = client.get("/sample", params={"n": 2, "offset": bad})
        assert r.status_code == 422 and "offset" in r.text
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["SampleRequest"]["properties"]["n"]["maximum"] == 4096


def test_pure_map_reproduces_training_latents(client, store):
    training = store.load_bundle("tiny").latents
    r = client.get("/sample", params={"n": 64, "extended": False})
    assert r.status_code == 200, r.text
    pure = np.asarray(r.json()["latents"])
    distances = np.abs(pure[:, None, :] - training[None]).max(axis=2).min(axis=1)
    assert distances.max() < 1e-6


def test_interpolate_points_and_indices(client):
    r = client.get("/interpolate", params={"start_index": 0, "end_index": 7, "steps": 5})
    assert r.status_code == 200
    body = r.json()
    assert len(body["t"]) == len(body["latents"]) == len(body["cells"]) == 5
    assert body["t"][0] == 0.0 and body["t"][-1] == 1.0
    for c in body["crossings"]:
        assert 0 <= c["t"] <= 1 and c["angle"] > 0
    start, end = [-0.4] * 4, [0.4] * 4
    posted = client.post(
        "/interpolate", json={"start": start, "end": end, "steps": 6, "images": True}
    ).json()
    np.testing.assert_allclose(posted["z"][0], start, atol=1e-6)
    strip = Image.open(io.BytesIO(base64.b64decode(posted["strip_png"])))
    assert strip.size[0] > strip.size[1] * 4  # one row of 6 frames
    png = client.get("/interpolate", params={"start_index": 0, "end_index": 7, "format": "png"})
    assert png.headers["content-type"] == "image/png" and "X-Crossings" in png.headers


def test_singularities_summary(client):
    s = client.get("/singularities", params={"limit": 5}).json()
    assert s["rule"] and s["threshold"] > 0
    assert 0 <= s["n_singular"] <= s["n_pairs"] and s["n_pairs"] > 0
    assert len(s["pairs"]) <= 5 and s["truncated"] == (s["n_singular"] > 5)
    angles = [p["angle"] for p in s["pairs"]]
    assert angles == sorted(angles, reverse=True)
    assert all(a > s["threshold"] for a in angles)
    assert (
        s["angle_quantiles"]["min"] <= s["angle_quantiles"]["median"] <= s["angle_quantiles"]["max"]
    )


def test_singularities_png_of_a_4d_model_is_a_picture(client):
    r = client.get("/singularities", params={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_metrics_expose_latency_swaps_and_fit(client):
    client.get("/sample", params={"n": 2})
    text = client.get("/metrics").text
    assert (
        'aeot_request_seconds_bucket{le="0.05",method="GET",route="/sample",status="200"}' in text
    )
    assert 'aeot_index_swaps_total{model="tiny"} 1.0' in text
    assert 'aeot_fit_iteration{model="tiny"}' in text and "aeot_fit_l1" in text


def test_openapi_and_web_page(client):
    spec = client.get("/openapi.json").json()
    for path in ("/sample", "/interpolate", "/singularities", "/models", "/models/{name}"):
        assert path in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "AE-OT" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_register_refit_delete_need_key(client, tmp_path):
    archive = bundle_archive(write_bundle(tmp_path / "b", n=40, d=2))
    files = {"bundle": ("b.tar.gz", archive)}
    assert client.post("/models", data={"name": "new"}, files=files).status_code == 401
    wrong = {"X-API-Key": "nope"}
    assert (
        client.post("/models", data={"name": "new"}, files=files, headers=wrong).status_code == 403
    )
    key = {"X-API-Key": API_KEY}
    r = client.post("/models", data={"name": "new"}, files=files, headers=key)
    assert r.status_code == 201 and r.json()["job"]["status"] == "queued"
    again = client.post("/models", data={"name": "new"}, files=files, headers=key)
    assert again.status_code == 409
    not_ready = client.get("/sample", params={"model": "new"})
    assert not_ready.status_code == 503 and int(not_ready.headers["Retry-After"]) >= 1
    assert client.post("/models/new/fit", json={}, headers=key).status_code == 409
    refit = client.post("/models/new/fit", json={"replace": True, "target_l1": 0.2}, headers=key)
    assert refit.status_code == 202 and refit.json()["target_l1"] == 0.2
    assert client.delete("/models/new").status_code == 401
    assert client.delete("/models/new", headers=key).status_code == 204
    gone = client.get("/models/new")
    # The 404 names the models there are (here the default one), as the CLI prints it.
    assert gone.status_code == 404
    known = [m["name"] for m in client.get("/models").json()["models"]]
    assert gone.json()["detail"] == f"unknown model 'new'; known models: {', '.join(known)}"


def test_refit_takes_a_method_and_a_singular_rule(client, store, tmp_path):
    key = {"X-API-Key": API_KEY}
    for name, d in (("flat2", 2), ("deep4", 4)):
        files = {"bundle": ("b.tar.gz", bundle_archive(write_bundle(tmp_path / name, n=40, d=d)))}
        assert client.post("/models", data={"name": name}, files=files, headers=key).is_success
    body = {"replace": True, "method": "exact", "singular_rule": "clusters"}
    r = client.post("/models/flat2/fit", json=body, headers=key)
    assert r.status_code == 202
    config = store.queue.job(r.json()["id"]).config
    assert config.fit.method == "exact" and config.potential.rule == ClusterShare()
    # Exact geometry needs d = 2 or 3; an unreadable rule names the accepted forms.
    bad = client.post("/models/deep4/fit", json=body, headers=key)
    assert bad.status_code == 422 and "dimension 2 or 3" in bad.json()["detail"]
    rule = {"replace": True, "singular_rule": "median"}
    bad = client.post("/models/deep4/fit", json=rule, headers=key)
    assert bad.status_code == 422 and "clusters" in bad.json()["detail"]
    method = {"replace": True, "method": "sgd"}
    assert client.post("/models/deep4/fit", json=method, headers=key).status_code == 422
    assert client.post("/models/none/fit", json=body, headers=key).status_code == 404


def test_mutations_disabled_without_configured_key(store):
    app = create_app(make_settings(store.root, api_key=None), store=store)
    with TestClient(app) as c:
        r = c.delete("/models/tiny", headers={"X-API-Key": "anything"})
        assert r.status_code == 403 and "AEOT_API_KEY" in r.json()["detail"]


def test_reads_can_require_the_key(store):
    app = create_app(make_settings(store.root, require_key_for_reads=True), store=store)
    with TestClient(app) as c:
        assert c.get("/sample").status_code == 401
        assert c.get("/sample", headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_async_client_over_asgi_transport(store):
    app = create_app(make_settings(store.root), store=store)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with AsyncAEOTClient("http://test", transport=transport, api_key=API_KEY) as c:
            sample = await c.sample_with_version(8, seed=5)
            again = await c.sample(8, seed=5)
            path = await c.interpolate(0, 3, steps=4)
            summary = await c.singularities(limit=2)
            ready, status = await c.ready(), await c.model("tiny")
            job = await c.refit("tiny", target_l1=0.3, replace=True)
            return sample, again, path, summary, ready, status, job

    sample, again, path, summary, ready, status, job = asyncio.run(scenario())
    assert sample.latents.shape == (8, 4) and sample.version >= 1
    np.testing.assert_array_equal(sample.latents, again)
    assert path.latents.shape == (4, 4) and path.strip is not None
    assert summary["model"] == "tiny"
    assert ready and status["ready"] is True
    assert job["status"] == "queued" and job["target_l1"] == 0.3
    # Both clients are built from one list of API methods: none is missing from either.
    methods = [
        {n for n in dir(cls) if not n.startswith("_")} for cls in (AEOTClient, AsyncAEOTClient)
    ]
    assert methods[0] - {"close"} == methods[1] - {"aclose"}


def test_empty_store_is_not_ready(tmp_path):
    settings = make_settings(tmp_path / "empty")
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 503
        r = c.get("/sample")
        assert r.status_code == 503 and "no model" in r.json()["detail"]
        empty = {"default_model": None, "models": [], "jobs": [], "worker": None}
        assert c.get("/models").json() == empty


@pytest.fixture(scope="module")
def flat_client(tmp_path_factory):
    """A 2D model (5 clusters of 60 latents), where /singularities can draw the power diagram."""
    base = tmp_path_factory.getbasetemp()
    store = copy_store(fitted_template(base, name="flat", n=60, d=2), base / "flat-store")
    app = create_app(make_settings(store.root, default_model="flat"), store=store)
    with TestClient(app) as c:
        yield c


def test_singularities_png_draws_the_2d_power_diagram(flat_client):
    r = flat_client.get("/singularities", params={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["X-Model"] == "flat"
    assert Image.open(io.BytesIO(r.content)).size == (640, 640)
    s = flat_client.get("/singularities").json()
    # The default rule: the gap rule when the scores show a clear gap, else the share of
    # pairs joining two spectral clusters (diffusion frame), or with one cluster the median
    # (valley frame).
    assert s["rule"] in ("gap", "clusters", "quantile") and s["reason"].startswith("default")
    assert s["frame"] == ("diffusion" if s["clusters"] > 1 else "valley") and s["n_pairs"] > 0
    if s["threshold"] is None:  # fewer than 2 adjacent pairs: nothing can be singular
        assert s["n_singular"] == 0
    else:
        assert s["n_singular"] == sum(1 for p in s["pairs"] if p["angle"] > s["threshold"])


def test_interpolation_crossings_are_singular_facets_in_order(flat_client):
    body = flat_client.get(
        "/interpolate", params=[("start", -0.5), ("start", -0.5), ("end", 0.5), ("end", 0.5)]
    ).json()
    threshold = flat_client.get("/singularities").json()["threshold"]
    ts = [c["t"] for c in body["crossings"]]
    assert ts == sorted(ts) and all(0 <= t <= 1 for t in ts)
    for c in body["crossings"]:
        assert c["angle"] > threshold and c["from_cell"] != c["to_cell"]
    cells = body["cells"]
    assert len(cells) == 16 and cells[0] != cells[-1]  # opposite corners lie in different cells
