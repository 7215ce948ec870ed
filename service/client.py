"""Python clients of the service on httpx: :class:`AEOTClient` (sync), :class:`AsyncAEOTClient`.

Both return numpy arrays for latents, PIL images for pictures and plain dicts for status; an
HTTP error raises :class:`AEOTError` carrying the status code and the server's message.

Example:
    >>> with AEOTClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     client.wait_ready(timeout=120)
    ...     latents = client.sample(64, seed=1)            # (64, d) float32
    ...     grid = client.sample_images(16, seed=1)        # PIL image

"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image

DEFAULT_TIMEOUT = 60.0


class AEOTError(RuntimeError):
    """An error answer of the service.

    Attributes:
        status_code: HTTP status. detail: the server's message. retry_after: seconds (503).

    """

    def __init__(self, status_code: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True, kw_only=True)
class Sample:
    """Sampled latents and the potential version that produced them."""

    latents: np.ndarray
    version: int
    model: str


@dataclass(frozen=True, kw_only=True)
class InterpolationResult:
    """Frames of an interpolation (see ``/interpolate``).

    Attributes:
        t: segment parameters, shape ``(steps,)``. z: source points ``(steps, d)``.
        latents: mapped latents ``(steps, d)``. cells: cells ``(steps,)``.
        crossings: singular crossings as dicts (t, from_cell, to_cell, angle).
        strip: decoded frames in one row, when requested.
        version: potential version.

    """

    t: np.ndarray
    z: np.ndarray
    latents: np.ndarray
    cells: np.ndarray
    crossings: list[dict[str, Any]]
    strip: Image.Image | None
    version: int


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = str(response.json().get("detail", response.text))
    except ValueError:
        detail = response.text
    retry = response.headers.get("Retry-After")
    raise AEOTError(response.status_code, detail, float(retry) if retry else None)


def _params(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _interp_body(
    start: Any, end: Any, steps: int, model: str | None, images: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"steps": steps, "images": images, "model": model}
    if isinstance(start, int | np.integer) and isinstance(end, int | np.integer):
        body.update(start_index=int(start), end_index=int(end))
    else:
        body.update(start=np.asarray(start, float).tolist(), end=np.asarray(end, float).tolist())
    return _params(**body)


def _interp_result(data: dict[str, Any]) -> InterpolationResult:
    strip = None
    if data.get("strip_png"):
        strip = Image.open(io.BytesIO(base64.b64decode(data["strip_png"])))
    return InterpolationResult(
        t=np.asarray(data["t"]),
        z=np.asarray(data["z"], np.float32),
        latents=np.asarray(data["latents"], np.float32),
        cells=np.asarray(data["cells"]),
        crossings=data["crossings"],
        strip=strip,
        version=int(data["version"]),
    )


def _sample_result(response: httpx.Response) -> Sample:
    latents = np.load(io.BytesIO(response.content), allow_pickle=False)
    return Sample(
        latents=latents,
        version=int(response.headers["X-Potential-Version"]),
        model=response.headers["X-Model"],
    )


class AEOTClient:
    """Synchronous client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` (needed for register / refit / delete).
        timeout: seconds per request.
        transport: an httpx transport (tests pass ``httpx.ASGITransport`` or a WSGI one).

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

    def _get(self, path: str, **params: Any) -> httpx.Response:
        return _check(self._http.get(path, params=_params(**params)))

    def sample_with_version(
        self, n: int, seed: int = 0, *, extended: bool = True, model: str | None = None
    ) -> Sample:
        """``n`` latents (``.npy`` transfer) and the potential version that made them."""
        r = self._get("/sample", n=n, seed=seed, extended=extended, model=model, format="npy")
        return _sample_result(r)

    def sample(
        self, n: int, seed: int = 0, *, extended: bool = True, model: str | None = None
    ) -> np.ndarray:
        """``n`` latents, shape ``(n, d)``, float32."""
        return self.sample_with_version(n, seed, extended=extended, model=model).latents

    def sample_images(
        self, n: int, seed: int = 0, *, extended: bool = True, model: str | None = None
    ) -> Image.Image:
        """``n`` decoded samples as one PNG grid."""
        r = self._get("/sample", n=n, seed=seed, extended=extended, model=model, format="png")
        return Image.open(io.BytesIO(r.content))

    def interpolate(
        self,
        start: Any,
        end: Any,
        steps: int = 16,
        *,
        model: str | None = None,
        images: bool = True,
    ) -> InterpolationResult:
        """Interpolate between two source points (arrays) or two training indices (ints)."""
        body = _interp_body(start, end, steps, model, images)
        return _interp_result(_check(self._http.post("/interpolate", json=body)).json())

    def singularities(self, *, model: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Singular set summary (threshold, rule, counts, pairs)."""
        return dict(self._get("/singularities", model=model, limit=limit).json())

    def singularities_image(self, *, model: str | None = None) -> Image.Image:
        """Power diagram with singular facets (2D models)."""
        r = self._get("/singularities", model=model, format="png")
        return Image.open(io.BytesIO(r.content))

    def models(self) -> dict[str, Any]:
        """``/models``: every model, the default one, active jobs."""
        return dict(self._get("/models").json())

    def model(self, name: str) -> dict[str, Any]:
        """``/models/{name}``: status and fit progress."""
        return dict(self._get(f"/models/{name}").json())

    def register(self, name: str, archive: bytes) -> dict[str, Any]:
        """Upload a bundle archive (tar/zip) as model ``name`` (needs the API key)."""
        files = {"bundle": ("bundle.tar.gz", archive, "application/octet-stream")}
        r = self._http.post("/models", data={"name": name}, files=files)
        return dict(_check(r).json())

    def refit(self, name: str, **options: Any) -> dict[str, Any]:
        """Queue a refit (options: target_l1, seed, max_iter, time_budget, replace)."""
        return dict(_check(self._http.post(f"/models/{name}/fit", json=options)).json())

    def train(self, name: str, dataset: str, **options: Any) -> dict[str, Any]:
        """Queue training ``name`` on ``dataset`` (relative to the server's data root; key).

        Options: split, subset, latent_dim, arch, epochs, decoder_epochs, image_size,
        channels, seed. Returns the job; its epoch and loss show in :meth:`models`.
        """
        body = {"dataset": dataset, **_params(**options)}
        return dict(_check(self._http.post(f"/models/{name}/train", json=body)).json())

    def delete(self, name: str) -> None:
        """Delete a model (needs the API key)."""
        _check(self._http.delete(f"/models/{name}"))

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
    """Asynchronous client with the same methods as :class:`AEOTClient` (awaitable)."""

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

    async def _get(self, path: str, **params: Any) -> httpx.Response:
        return _check(await self._http.get(path, params=_params(**params)))

    async def sample_with_version(
        self, n: int, seed: int = 0, *, extended: bool = True, model: str | None = None
    ) -> Sample:
        """``n`` latents and the potential version that made them."""
        r = await self._get("/sample", n=n, seed=seed, extended=extended, model=model, format="npy")
        return _sample_result(r)

    async def sample(
        self, n: int, seed: int = 0, *, extended: bool = True, model: str | None = None
    ) -> np.ndarray:
        """``n`` latents, shape ``(n, d)``, float32."""
        return (await self.sample_with_version(n, seed, extended=extended, model=model)).latents

    async def sample_images(
        self, n: int, seed: int = 0, *, extended: bool = True, model: str | None = None
    ) -> Image.Image:
        """``n`` decoded samples as one PNG grid."""
        r = await self._get("/sample", n=n, seed=seed, extended=extended, model=model, format="png")
        return Image.open(io.BytesIO(r.content))

    async def interpolate(
        self,
        start: Any,
        end: Any,
        steps: int = 16,
        *,
        model: str | None = None,
        images: bool = True,
    ) -> InterpolationResult:
        """Interpolate between two source points or two training indices."""
        body = _interp_body(start, end, steps, model, images)
        return _interp_result(_check(await self._http.post("/interpolate", json=body)).json())

    async def singularities(self, *, model: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Singular set summary."""
        return dict((await self._get("/singularities", model=model, limit=limit)).json())

    async def models(self) -> dict[str, Any]:
        """``/models``."""
        return dict((await self._get("/models")).json())

    async def model(self, name: str) -> dict[str, Any]:
        """``/models/{name}``."""
        return dict((await self._get(f"/models/{name}")).json())

    async def train(self, name: str, dataset: str, **options: Any) -> dict[str, Any]:
        """Queue training ``name`` on ``dataset`` (relative to the server's data root; key)."""
        body = {"dataset": dataset, **_params(**options)}
        return dict(_check(await self._http.post(f"/models/{name}/train", json=body)).json())

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
                pass
            await asyncio.sleep(interval)
        raise TimeoutError(f"service not ready after {timeout:.0f} s")
