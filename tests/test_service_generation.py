"""Version pinning, class-conditional sampling, encode/decode/reconstruct, crossing marks and
the singular-set picture of models with d > 2, through the HTTP API."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.images import CROSSING_RGB, STRIP_PAD, crossing_gaps, singular_set_png, strip_png
from service.job_config import job_config
from solver import Potential, make_problem
from tests.service_helpers import (
    LABELLED_CENTRES as CENTRES,
)
from tests.service_helpers import (
    LABELLED_NAMES,
    copy_store,
    fitted_template,
    labelled_template,
    make_settings,
)


@pytest.fixture
def tiny(tmp_path_factory, tmp_path):
    store = copy_store(fitted_template(tmp_path_factory.getbasetemp()), tmp_path / "store")
    with TestClient(create_app(make_settings(store.root), store=store)) as c:
        yield c, store


@pytest.fixture
def lab(tmp_path_factory, tmp_path):
    root = labelled_template(tmp_path_factory.getbasetemp())
    store = copy_store(root, tmp_path / "store")
    settings = make_settings(store.root, default_model="lab")
    with TestClient(create_app(settings, store=store)) as c:
        yield c, root


def test_version_pins_a_published_potential(tiny):
    client, store = tiny
    before = client.get("/sample", params={"n": 32, "seed": 4, "format": "npy"})
    v1 = int(before.headers["X-Potential-Version"])
    # Publish a different potential (shifted heights) as the next version.
    pot = store.potential("tiny")
    store.enqueue_fit("tiny", job_config(make_settings(store.root)))
    job = store.queue.claim("test-worker", stale_seconds=60.0)  # only a running job may publish
    problem = make_problem(pot.targets)
    shifted = pot.heights + np.random.default_rng(0).normal(0, 0.5, pot.heights.shape)
    other = Potential.build(problem, shifted, seed=0, accuracy=pot.accuracy)
    v2 = store.publish(job, other, 1)
    assert v2 == v1 + 1
    client.app.state.serving.refresh()
    after = client.get("/sample", params={"n": 32, "seed": 4, "format": "npy"})
    assert after.headers["X-Potential-Version"] == str(v2)
    assert after.content != before.content
    pinned = client.get("/sample", params={"n": 32, "seed": 4, "format": "npy", "version": v1})
    assert pinned.status_code == 200 and pinned.headers["X-Potential-Version"] == str(v1)
    assert pinned.content == before.content
    for path, kw in [
        ("/sample", {"params": {"version": 99}}),
        ("/singularities", {"params": {"version": 99}}),
        ("/interpolate", {"params": {"start_index": 0, "end_index": 1, "version": 99}}),
    ]:
        r = client.get(path, **kw)
        assert r.status_code == 404, path
        assert "no potential version 99" in r.json()["detail"]
        assert f"1 to {v2}" in r.json()["detail"]
    s = client.get("/singularities", params={"version": v1}).json()
    assert s["version"] == v1
    assert client.get("/sample", params={"version": 0}).status_code == 422
    assert client.get("/sample", params={"version": 2**31}).status_code == 422


def test_label_needs_a_labelled_bundle(tiny):
    client, _ = tiny
    r = client.get("/sample", params={"label": 1})
    assert r.status_code == 422 and "no labels" in r.json()["detail"]
    assert client.get("/models/tiny").json()["classes"] == []


def test_class_conditional_samples_stay_in_their_class(lab):
    client, template = lab
    status = client.get("/models/lab").json()
    assert status["classes"] == [0, 1, 2, 3]
    assert status["class_names"] == list(LABELLED_NAMES)
    assert status["image_shape"] == [1, 8, 8]
    assert status["served_accuracy"]["l1"] == status["accuracy"]["l1"]
    for label in range(4):
        for extended in (True, False):
            params = {"n": 40, "seed": 2, "label": label, "extended": extended}
            r = client.get("/sample", params=params)
            assert r.status_code == 200
            assert r.json()["label"] == label
            z = np.asarray(r.json()["latents"])
            nearest = np.linalg.norm(z[:, None, :] - CENTRES[None], axis=2).argmin(axis=1)
            assert (nearest == label).all(), (label, extended)
            again = client.get("/sample", params=params)
            assert again.content == r.content
            second = client.get("/sample", params={**params, "n": 15, "offset": 25}).json()
            assert second["latents"] == r.json()["latents"][25:]
    r = client.get("/sample", params={"label": 9})
    assert r.status_code == 422 and "classes are [0, 1, 2, 3]" in r.json()["detail"]


def test_class_interpolation_joins_two_cells_of_the_class(lab):
    client, _ = lab
    r = client.post("/interpolate", json={"label": 2, "seed": 1, "steps": 8})
    assert r.status_code == 200
    body = r.json()
    ends = np.asarray(body["latents"])[[0, -1]]
    nearest = np.linalg.norm(ends[:, None, :] - CENTRES[None], axis=2).argmin(axis=1)
    assert nearest.tolist() == [2, 2]
    assert body["cells"][0] != body["cells"][-1]
    bad = client.post("/interpolate", json={"label": 2, "start_index": 0, "end_index": 1})
    assert bad.status_code == 422 and "label picks the endpoints" in bad.json()["detail"]


def test_crossing_gaps_and_strip_marks():
    assert crossing_gaps([0.0, 0.1, 0.5, 0.52, 1.0], 11) == [0, 0, 4, 5, 9]
    frames = np.full((4, 1, 8, 8), 0.5, np.float32)
    img = np.asarray(Image.open(io.BytesIO(strip_png(frames, [1]))).convert("RGB"))
    red = (img == CROSSING_RGB).all(axis=2).all(axis=0)
    cols = np.flatnonzero(red)
    tile = (img.shape[1] - STRIP_PAD) // 4 - STRIP_PAD
    start = STRIP_PAD + 2 * (tile + STRIP_PAD) - STRIP_PAD
    assert cols.tolist() == list(range(start, start + STRIP_PAD))
    with pytest.raises(ValueError, match="gap 3"):
        strip_png(frames, [3])


def test_interpolation_pictures_mark_every_crossing(lab):
    client, _ = lab
    # From cluster 0 to cluster 1: the segment must cross a singular facet between classes.
    body = {"start_index": 0, "end_index": 30, "steps": 10}
    data = client.post("/interpolate", json={**body, "images": True}).json()
    assert data["crossings"], "expected a singular crossing between two clusters"
    gaps = sorted({c["gap"] for c in data["crossings"]})
    assert gaps == sorted(set(crossing_gaps([c["t"] for c in data["crossings"]], 10)))
    for png in (
        base64.b64decode(data["strip_png"]),
        client.post("/interpolate", json={**body, "format": "png"}).content,
    ):
        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        red_cols = np.flatnonzero((img == CROSSING_RGB).all(axis=2).all(axis=0))
        tile = (img.shape[1] - STRIP_PAD) // 10 - STRIP_PAD
        marked = sorted({(c - STRIP_PAD) // (tile + STRIP_PAD) for c in red_cols} - {10})
        assert marked == gaps


def test_singularities_png_in_higher_dimensions(tiny):
    client, _ = tiny
    r = client.get("/singularities", params={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size[0] == 720 and img.size[1] > 300
    pixels = np.asarray(img.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 50  # the threshold line


def test_singular_set_picture_keeps_a_long_title_inside_its_edges():
    rng = np.random.default_rng(0)
    title = "a-model-with-a-long-name v12: " + "1234 of 5678 adjacent pairs singular, " * 6
    png = singular_set_png(
        angles=rng.uniform(0, 1, 500),
        threshold=0.5,
        title=title,
        pair_images=np.zeros((0, 2, 1, 8, 8)),
        pair_angles=np.zeros(0),
        size_px=400,
    )
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    # The title is the top rows' only ink; its lines stop short of both edges.
    top = pixels[: pixels.shape[0] // 4]
    assert (top < 128).any()
    assert (top[:, :4] > 250).all() and (top[:, -4:] > 250).all()


def test_encode_decode_reconstruct(tiny):
    client, store = tiny
    bundle = store.load_bundle("tiny")
    images = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    enc = client.post("/encode", json={"images": images.tolist()})
    assert enc.status_code == 200
    latents = np.asarray(enc.json()["latents"], np.float32)
    np.testing.assert_allclose(latents, bundle.encode(images), rtol=1e-5, atol=1e-5)
    npy = client.post("/encode", json={"images": images.tolist(), "format": "npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), latents)
    dec = client.post("/decode", json={"latents": latents.tolist(), "format": "json"})
    decoded = np.asarray(dec.json()["images"], np.float32)
    np.testing.assert_allclose(decoded, bundle.decode(latents), rtol=1e-5, atol=1e-5)
    grid = client.post("/decode", json={"latents": latents.tolist()})
    assert grid.headers["content-type"] == "image/png"
    rec = client.post("/reconstruct", json={"images": images.tolist(), "format": "npy"})
    np.testing.assert_allclose(np.load(io.BytesIO(rec.content)), decoded, rtol=1e-5, atol=1e-5)
    # PNG in: 8-bit quantisation of the same images gives nearly the same codes.
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray((im[0] * 255 + 0.5).astype(np.uint8), mode="L").save(buf, format="PNG")
        pngs.append(base64.b64encode(buf.getvalue()).decode())
    from_png = np.asarray(client.post("/encode", json={"png": pngs}).json()["latents"])
    np.testing.assert_allclose(from_png, latents, atol=0.05)
    picture = client.post("/reconstruct", json={"png": pngs})
    assert (
        Image.open(io.BytesIO(picture.content)).size[1]
        > Image.open(io.BytesIO(grid.content)).size[1] / 2
    )


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/encode", {"images": [[[[0.0] * 8] * 8]] * 2 + [[[[0.0] * 7] * 8]]}, "regular"),
        ("/encode", {"images": [[[[0.0] * 4] * 4]]}, "shape (n, 1, 8, 8)"),
        ("/encode", {"images": [[[[1.5] * 8] * 8]]}, "less than or equal to 1"),
        ("/encode", {"png": ["bm90IGEgcG5n"]}, "png[0]: not a readable PNG"),
        ("/encode", {"png": ["%%%"]}, "png[0]"),
        ("/encode", {}, "either images"),
        ("/encode", {"images": []}, "at least one"),
        ("/decode", {"latents": [[0.0, 1.0]]}, "d=4"),
        ("/decode", {"latents": [[1e9, 0, 0, 0]]}, "less than or equal to 1000000"),
        ("/decode", {"latents": [[0.0] * 4] * 300}, "limit of 256"),
        ("/decode", {"latents": []}, "at least 1"),
        ("/reconstruct", {"images": [[[[0.0] * 8] * 8]], "format": "gif"}, "format"),
    ],
)
def test_autoencoder_endpoints_refuse_bad_input(tiny, path, body, message):
    client, _ = tiny
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_png_upload_of_the_wrong_size(tiny):
    client, _ = tiny
    buf = io.BytesIO()
    Image.new("L", (9, 8)).save(buf, format="PNG")
    r = client.post("/encode", json={"png": [base64.b64encode(buf.getvalue()).decode()]})
    assert r.status_code == 422 and "must be 8x8 pixels" in r.json()["detail"]


def test_singular_pairs_come_with_their_decoded_codes(lab, tmp_path):
    client, root = lab
    s = client.get("/singularities", params={"limit": 3, "images": True}).json()
    assert len(s["pairs"]) == 3
    for pair in s["pairs"]:
        img = Image.open(io.BytesIO(base64.b64decode(pair["pair_png"])))
        assert img.size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # two 8x8 codes upscaled to 32 px
    plain = client.get("/singularities", params={"limit": 3}).json()
    assert all(p["pair_png"] is None for p in plain["pairs"])
    store = copy_store(root, tmp_path / "small")
    settings = make_settings(store.root, default_model="lab", max_images=4)
    with TestClient(create_app(settings, store=store)) as small:
        r = small.get("/singularities", params={"limit": 3, "images": True})
    assert r.status_code == 422 and "limit=3 exceeds 2 pairs" in r.json()["detail"]
