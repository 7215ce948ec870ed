"""The sync and async clients expose the same operations, and the async ones work end to end."""

from __future__ import annotations

import asyncio
import inspect

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


def _wsgi_free_transport(app) -> httpx.BaseTransport:  # noqa: ANN001
    """A sync transport into the ASGI app (Starlette's test client transport)."""
    from fastapi.testclient import TestClient

    return TestClient(app)._transport
