"""The sync and async clients expose the same operations, and the async ones work end to end."""

from __future__ import annotations

import asyncio
import inspect
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.client import AEOTClient, AEOTError, AsyncAEOTClient
from tests.service_helpers import (
    API_KEY,
    bundle_archive,
    copy_store,
    fitted_template,
    make_settings,
    write_bundle,
)

# Lifecycle methods that differ by design (context manager / close).
_LIFECYCLE = {"close", "aclose"}


def _public(client: object) -> dict[str, inspect.Signature]:
    names = [n for n in dir(client) if not n.startswith("_") and n not in _LIFECYCLE]
    return {n: inspect.signature(getattr(client, n)) for n in names if callable(getattr(client, n))}


def test_both_clients_expose_the_same_methods_and_signatures():
    sync, asynchronous = AEOTClient("http://test"), AsyncAEOTClient("http://test")
    try:
        methods, async_methods = _public(sync), _public(asynchronous)
    finally:
        sync.close()
        asyncio.run(asynchronous.aclose())
    assert methods == async_methods
    new = {"register", "refit", "delete", "singularities_image", "encode", "decode", "reconstruct"}
    assert new <= set(methods)
    for name in ("sample", "interpolate", "singularities", "encode"):
        assert "version" in methods[name].parameters, name
    assert "label" in methods["sample"].parameters and "label" in methods["interpolate"].parameters


@pytest.fixture
def app(tmp_path_factory, tmp_path):
    store = copy_store(fitted_template(tmp_path_factory.getbasetemp()), tmp_path / "store")
    return create_app(make_settings(store.root), store=store)


def test_async_client_covers_every_operation(app, tmp_path):
    archive = bundle_archive(write_bundle(tmp_path / "bundle", n=30, d=4))
    images = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)

    async def scenario() -> dict[str, object]:
        transport = httpx.ASGITransport(app=app)
        out: dict[str, object] = {}
        async with AsyncAEOTClient("http://test", api_key=API_KEY, transport=transport) as c:
            await c.wait_ready(timeout=10, interval=0.05)
            sample = await c.sample_with_version(6, seed=3)
            out["pinned"] = await c.sample(6, seed=3, version=sample.version)
            out["sample"] = sample
            out["grid"] = await c.sample_images(4, seed=3)
            out["path"] = await c.interpolate(0, 5, steps=6)
            out["summary"] = await c.singularities(limit=3, version=sample.version)
            out["picture"] = await c.singularities_image()
            out["codes"] = await c.encode(images)
            out["decoded"] = await c.decode(out["codes"])
            out["decoded_grid"] = await c.decode_images(out["codes"])
            out["rec"] = await c.reconstruct(images)
            out["rec_picture"] = await c.reconstruct_image(images)
            out["registered"] = await c.register("other", archive)
            out["refit"] = await c.refit("tiny", target_l1=0.2)
            out["status"] = await c.model("other")
            await c.delete("other")
            out["listing"] = await c.models()
            try:
                await c.sample(2, version=999)
            except AEOTError as exc:
                out["error"] = exc
        return out

    out = asyncio.run(scenario())
    sample = out["sample"]
    assert sample.latents.shape == (6, 4) and sample.version >= 1
    np.testing.assert_array_equal(out["pinned"], sample.latents)
    assert isinstance(out["grid"], Image.Image) and isinstance(out["picture"], Image.Image)
    assert out["path"].strip is not None and out["summary"]["version"] == sample.version
    assert out["codes"].shape == (2, 4)
    assert out["decoded"].shape == out["rec"].shape == (2, 1, 8, 8)
    np.testing.assert_allclose(out["decoded"], out["rec"], atol=1e-6)
    assert out["rec_picture"].size[1] > out["decoded_grid"].size[1] / 2
    assert out["registered"]["name"] == "other" and out["status"]["name"] == "other"
    assert out["refit"]["status"] == "queued" and out["refit"]["target_l1"] == 0.2
    assert [m["name"] for m in out["listing"]["models"]] == ["tiny"]
    assert out["error"].status_code == 404 and "version 999" in out["error"].detail


def test_sync_client_new_operations_match_the_async_ones(app):
    images = np.random.default_rng(1).random((3, 1, 8, 8)).astype(np.float32)
    with AEOTClient("http://test", transport=_wsgi_free_transport(app)) as c:
        codes = c.encode(images)
        np.testing.assert_allclose(c.reconstruct(images), c.decode(codes), atol=1e-6)
        with pytest.raises(AEOTError) as err:
            c.sample(2, label=1)
    assert err.value.status_code == 422 and "no labels" in err.value.detail


def _wsgi_free_transport(app) -> httpx.BaseTransport:
    """A sync transport into the ASGI app (Starlette's test client transport)."""
    from fastapi.testclient import TestClient

    return TestClient(app)._transport


class _Recording(httpx.BaseTransport):
    """A sync transport that records each request's query before passing it on."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.queries = inner, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.queries.append((request.url.path, dict(request.url.params)))
        return self.inner.handle_request(request)


def test_samples_beyond_the_server_limit_come_in_pages_equal_to_one_answer(app, tmp_path):
    with AEOTClient("http://test", transport=_wsgi_free_transport(app)) as c:
        whole = c.sample_with_version(40, seed=3)
    small = create_app(make_settings(tmp_path / "store", max_n=16))
    recording = _Recording(_wsgi_free_transport(small))
    with AEOTClient("http://test", transport=recording) as c:
        assert c.sample_limit() == 16
        pages = list(c.iter_samples(40, seed=3))
        paged = c.sample_with_version(40, seed=3)
        answers = list(c.iter_samples_json(40, seed=3))
    assert [p.latents.shape[0] for p in pages] == [16, 16, 8]
    np.testing.assert_array_equal(paged.latents, whole.latents)
    assert paged.version == whole.version and paged.model == "tiny"
    rows = [row for answer in answers for row in answer["latents"]]
    np.testing.assert_array_equal(np.asarray(rows, np.float32), whole.latents)
    # The limit is read once; pages after the first are pinned to its model and version.
    samples = [q for path, q in recording.queries if path == "/sample"]
    assert [path for path, _ in recording.queries].count("/openapi.json") == 1
    assert [q.get("offset") for q in samples[:3]] == [None, "16", "32"]
    assert "version" not in samples[0] and "model" not in samples[0]
    assert samples[1]["version"] == samples[2]["version"] == str(whole.version)
    assert samples[1]["model"] == "tiny"

    async def paged_async() -> tuple[np.ndarray, int]:
        transport = httpx.ASGITransport(app=small)
        async with AsyncAEOTClient("http://test", transport=transport) as c:
            pages = [p async for p in c.iter_samples(40, seed=3)]
            return await c.sample(40, seed=3), len(pages)

    latents, n_pages = asyncio.run(paged_async())
    np.testing.assert_array_equal(latents, whole.latents)
    assert n_pages == 3


def _answers(*codes: int, retry_after: str | None = None) -> tuple[httpx.MockTransport, list]:
    """A transport answering ``codes`` in turn (then 200), recording each request's path."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        code = codes[len(seen) - 1] if len(seen) <= len(codes) else 200
        headers = {"Retry-After": retry_after} if retry_after and code == 503 else {}
        body = {"detail": "model 'tiny' has no fitted potential yet"} if code != 200 else {}
        return httpx.Response(code, json={**body, "models": []}, headers=headers)

    return httpx.MockTransport(handle), seen


def test_a_503_is_retried_with_bounded_back_off_and_then_raised():
    transport, seen = _answers(503, 503, retry_after="30")
    with AEOTClient("http://test", transport=transport, max_backoff=0.01) as c:
        assert c.models() == {"models": []}
    assert seen == ["/models"] * 3
    transport, seen = _answers(503, 503, 503)
    with AEOTClient("http://test", transport=transport, retries=1, backoff=0.001) as c:
        with pytest.raises(AEOTError) as err:
            c.models()
    assert err.value.status_code == 503 and "no fitted potential" in err.value.detail
    assert len(seen) == 2
    transport, seen = _answers(503)
    with AEOTClient("http://test", transport=transport, backoff=0.001) as c:
        assert c.ready() is False  # the readiness probe answers at once
    assert len(seen) == 1
    transport, seen = _answers(500, 503)
    with AEOTClient("http://test", transport=transport, backoff=0.001) as c:
        with pytest.raises(AEOTError) as err:
            c.models()
    assert err.value.status_code == 500 and len(seen) == 1
    with pytest.raises(ValueError, match="retries"):
        AEOTClient("http://test", retries=-1)

    async def async_retries() -> list[str]:
        transport, seen = _answers(503, 503)
        async with AsyncAEOTClient("http://test", transport=transport, backoff=0.001) as c:
            await c.models()
        return seen

    assert asyncio.run(async_retries()) == ["/models"] * 3


def test_the_timeout_ends_a_request_to_a_server_that_never_answers():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with AEOTClient(url, timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
            c.models()


def test_fetch_returns_the_servers_bytes_as_sent(app):
    with AEOTClient("http://test", transport=_wsgi_free_transport(app)) as c:
        png = c.fetch(AEOTClient.sample_images, 4, seed=1)
        assert png.headers["content-type"] == "image/png"
        assert png.content == c.fetch(AEOTClient.sample_images, 4, seed=1).content
        assert Image.open(io.BytesIO(png.content)).size == c.sample_images(4, seed=1).size
        with pytest.raises(AEOTError) as err:
            c.fetch(AEOTClient.model, "nope")
    assert err.value.status_code == 404
