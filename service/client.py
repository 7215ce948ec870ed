"""Python clients of the service on httpx: :class:`AEOTClient` (sync), :class:`AsyncAEOTClient`.

Both return numpy arrays for latents, PIL images for pictures and plain dicts for status; an
HTTP error raises :class:`AEOTError` carrying the status code and the server's message.

Each operation is written once in :mod:`service.api_calls` (the request and how to read its
answer); the two clients only send those calls, so they cannot drift apart (a test
checks that they expose the same public methods).

Example:
    >>> with AEOTClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     client.wait_ready(timeout=120)
    ...     latents = client.sample(64, seed=1)            # (64, d) float32
    ...     grid = client.sample_images(16, seed=1)        # PIL image

"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image

from service.api_calls import AEOTError, Call, Calls, InterpolationResult, Sample, check

__all__ = ["AEOTClient", "AEOTError", "AsyncAEOTClient", "InterpolationResult", "Sample"]

DEFAULT_TIMEOUT = 60.0


class AEOTClient:
    """Synchronous client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` (needed for register / refit / delete).
        timeout: seconds per request.
        transport: an httpx transport (tests pass ``httpx.ASGITransport`` or a WSGI one).

    Generation methods take ``model`` (default model when ``None``) and ``version`` (pin a
    published potential version; ``None``: the served one).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> AEOTClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: Call) -> Any:
        return call.read(check(self._http.request(call.method, call.path, **call.send_kwargs())))

    def sample_with_version(
        self,
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> Sample:
        """``n`` latents (``.npy`` transfer) and the potential version that made them.

        ``label``: only the cells of that class (bundles with labels).
        """
        opts = {"extended": extended, "model": model, "version": version, "label": label}
        return self._send(Calls.sample_with_version(n, seed, **opts))

    def sample(
        self,
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> np.ndarray:
        """``n`` latents, shape ``(n, d)``, float32."""
        return self.sample_with_version(
            n, seed, extended=extended, model=model, version=version, label=label
        ).latents

    def sample_images(
        self,
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> Image.Image:
        """``n`` decoded samples as one PNG grid."""
        opts = {"extended": extended, "model": model, "version": version, "label": label}
        return self._send(Calls.sample_images(n, seed, **opts))

    def interpolate(
        self,
        start: Any = None,
        end: Any = None,
        steps: int = 16,
        *,
        model: str | None = None,
        images: bool = True,
        version: int | None = None,
        label: int | None = None,
        seed: int | None = None,
    ) -> InterpolationResult:
        """Interpolate between points (arrays), training indices (ints) or a class's cells.

        With ``label`` and no endpoints, ``seed`` chooses two cells of that class. The strip
        (``images``) has a red bar between the frames where a singular crossing lies.
        """
        opts = {"model": model, "images": images, "version": version, "label": label}
        call = Calls.interpolate(start, end, steps, seed=seed, **opts)
        return self._send(call)

    def singularities(
        self, *, model: str | None = None, limit: int = 100, version: int | None = None
    ) -> dict[str, Any]:
        """Singular set summary (threshold, rule, counts, pairs)."""
        call = Calls.singularities(model=model, limit=limit, version=version)
        return self._send(call)

    def singularities_image(
        self, *, model: str | None = None, version: int | None = None
    ) -> Image.Image:
        """The singular set as a picture: 2D power diagram, or angle histogram + image pairs."""
        call = Calls.singularities_image(model=model, version=version)
        return self._send(call)

    def encode(
        self, images: Any, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        """Latent codes ``(n, d)`` of images: an array ``(n, C, H, W)`` or PNG file bytes."""
        call = Calls.encode(images, model=model, version=version)
        return self._send(call)

    def decode(
        self, latents: Any, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        """Images ``(n, C, H, W)`` in [0, 1] of latent codes ``(n, d)``."""
        call = Calls.decode(latents, "npy", model=model, version=version)
        return self._send(call)

    def decode_images(
        self, latents: Any, *, model: str | None = None, version: int | None = None
    ) -> Image.Image:
        """Decoded latent codes as one PNG grid."""
        call = Calls.decode(latents, "png", model=model, version=version)
        return self._send(call)

    def reconstruct(
        self, images: Any, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        """Decoder(encoder(images)): ``(n, C, H, W)`` in [0, 1]."""
        call = Calls.reconstruct(images, "npy", model=model, version=version)
        return self._send(call)

    def reconstruct_image(
        self, images: Any, *, model: str | None = None, version: int | None = None
    ) -> Image.Image:
        """Originals (top row) above their reconstructions (bottom row), one PNG."""
        call = Calls.reconstruct(images, "png", model=model, version=version)
        return self._send(call)

    def models(self) -> dict[str, Any]:
        """``/models``: every model, the default one, active jobs."""
        return self._send(Calls.models())

    def model(self, name: str) -> dict[str, Any]:
        """``/models/{name}``: status, fit progress, classes."""
        return self._send(Calls.model(name))

    def register(self, name: str, archive: bytes) -> dict[str, Any]:
        """Upload a bundle archive (tar/zip) as model ``name`` (needs the API key)."""
        return self._send(Calls.register(name, archive))

    def refit(self, name: str, **options: Any) -> dict[str, Any]:
        """Queue a refit (options: target_l1, seed, max_iter, time_budget, replace)."""
        return self._send(Calls.refit(name, options))

    def delete(self, name: str) -> None:
        """Delete a model (needs the API key)."""
        self._send(Calls.delete(name))

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        return self._http.get("/readyz").status_code == 200

    def wait_ready(self, timeout: float = 300.0, interval: float = 1.0) -> None:
        """Poll ``/readyz`` until ready; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.ready():
                    return
            except httpx.TransportError:
                pass  # server still starting
            time.sleep(interval)
        raise TimeoutError(f"service not ready after {timeout:.0f} s")


class AsyncAEOTClient:
    """Asynchronous client: the same methods as :class:`AEOTClient`, awaitable.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` (needed for register / refit / delete).
        timeout: seconds per request.
        transport: an httpx transport (tests pass ``httpx.ASGITransport`` or a WSGI one).

    Generation methods take ``model`` (default model when ``None``) and ``version`` (pin a
    published potential version; ``None``: the served one).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncAEOTClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        response = await self._http.request(call.method, call.path, **call.send_kwargs())
        return call.read(check(response))

    async def sample_with_version(
        self,
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> Sample:
        """``n`` latents (``.npy`` transfer) and the potential version that made them.

        ``label``: only the cells of that class (bundles with labels).
        """
        opts = {"extended": extended, "model": model, "version": version, "label": label}
        return await self._send(Calls.sample_with_version(n, seed, **opts))

    async def sample(
        self,
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> np.ndarray:
        """``n`` latents, shape ``(n, d)``, float32."""
        sample = await self.sample_with_version(
            n, seed, extended=extended, model=model, version=version, label=label
        )
        return sample.latents

    async def sample_images(
        self,
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> Image.Image:
        """``n`` decoded samples as one PNG grid."""
        opts = {"extended": extended, "model": model, "version": version, "label": label}
        return await self._send(Calls.sample_images(n, seed, **opts))

    async def interpolate(
        self,
        start: Any = None,
        end: Any = None,
        steps: int = 16,
        *,
        model: str | None = None,
        images: bool = True,
        version: int | None = None,
        label: int | None = None,
        seed: int | None = None,
    ) -> InterpolationResult:
        """Interpolate between points (arrays), training indices (ints) or a class's cells.

        With ``label`` and no endpoints, ``seed`` chooses two cells of that class. The strip
        (``images``) has a red bar between the frames where a singular crossing lies.
        """
        opts = {"model": model, "images": images, "version": version, "label": label}
        call = Calls.interpolate(start, end, steps, seed=seed, **opts)
        return await self._send(call)

    async def singularities(
        self, *, model: str | None = None, limit: int = 100, version: int | None = None
    ) -> dict[str, Any]:
        """Singular set summary (threshold, rule, counts, pairs)."""
        call = Calls.singularities(model=model, limit=limit, version=version)
        return await self._send(call)

    async def singularities_image(
        self, *, model: str | None = None, version: int | None = None
    ) -> Image.Image:
        """The singular set as a picture: 2D power diagram, or angle histogram + image pairs."""
        call = Calls.singularities_image(model=model, version=version)
        return await self._send(call)

    async def encode(
        self, images: Any, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        """Latent codes ``(n, d)`` of images: an array ``(n, C, H, W)`` or PNG file bytes."""
        call = Calls.encode(images, model=model, version=version)
        return await self._send(call)

    async def decode(
        self, latents: Any, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        """Images ``(n, C, H, W)`` in [0, 1] of latent codes ``(n, d)``."""
        call = Calls.decode(latents, "npy", model=model, version=version)
        return await self._send(call)

    async def decode_images(
        self, latents: Any, *, model: str | None = None, version: int | None = None
    ) -> Image.Image:
        """Decoded latent codes as one PNG grid."""
        call = Calls.decode(latents, "png", model=model, version=version)
        return await self._send(call)

    async def reconstruct(
        self, images: Any, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        """Decoder(encoder(images)): ``(n, C, H, W)`` in [0, 1]."""
        call = Calls.reconstruct(images, "npy", model=model, version=version)
        return await self._send(call)

    async def reconstruct_image(
        self, images: Any, *, model: str | None = None, version: int | None = None
    ) -> Image.Image:
        """Originals (top row) above their reconstructions (bottom row), one PNG."""
        call = Calls.reconstruct(images, "png", model=model, version=version)
        return await self._send(call)

    async def models(self) -> dict[str, Any]:
        """``/models``: every model, the default one, active jobs."""
        return await self._send(Calls.models())

    async def model(self, name: str) -> dict[str, Any]:
        """``/models/{name}``: status, fit progress, classes."""
        return await self._send(Calls.model(name))

    async def register(self, name: str, archive: bytes) -> dict[str, Any]:
        """Upload a bundle archive (tar/zip) as model ``name`` (needs the API key)."""
        return await self._send(Calls.register(name, archive))

    async def refit(self, name: str, **options: Any) -> dict[str, Any]:
        """Queue a refit (options: target_l1, seed, max_iter, time_budget, replace)."""
        return await self._send(Calls.refit(name, options))

    async def delete(self, name: str) -> None:
        """Delete a model (needs the API key)."""
        await self._send(Calls.delete(name))

    async def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        return (await self._http.get("/readyz")).status_code == 200

    async def wait_ready(self, timeout: float = 300.0, interval: float = 1.0) -> None:
        """Poll ``/readyz`` until ready; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if await self.ready():
                    return
            except httpx.TransportError:
                pass  # server still starting
            await asyncio.sleep(interval)
        raise TimeoutError(f"service not ready after {timeout:.0f} s")
