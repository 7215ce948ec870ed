"""Python clients of the service on httpx: :class:`AEOTClient` (sync), :class:`AsyncAEOTClient`.

Both return numpy arrays for latents, PIL images for pictures and plain dicts for status; an
HTTP error raises :class:`AEOTError` carrying the status code and the server's message.

Each API method is written once, in :class:`_Api`, as a function that says which request to
send and how to read its answer (a :class:`Call`); :class:`endpoint` turns it into a method of
both clients, which differ only in how they send a call (:meth:`AEOTClient._run` blocks,
:meth:`AsyncAEOTClient._run` is awaited). A new API method is one function in :class:`_Api`.

Example:
    >>> with AEOTClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     client.wait_ready(timeout=120)
    ...     latents = client.sample(64, seed=1)            # (64, d) float32
    ...     grid = client.sample_images(16, seed=1)        # PIL image

"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

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


T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True, kw_only=True)
class Call(Generic[T]):
    """One request to send and how to read its answer.

    Attributes:
        method: HTTP method. path: URL path. parse: turns the (checked) response into the
        method's result. params, json, data, files: as httpx takes them.
        check: raise :class:`AEOTError` for an error status before parsing.

    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    check: bool = True


class endpoint(Generic[P, T]):  # noqa: N801 - used as a decorator, like property
    """An API method written once as ``build(*args) -> Call``; a method of both clients.

    On :class:`AEOTClient` it returns the parsed result; on :class:`AsyncAEOTClient` an
    awaitable of it. Its name, docstring and signature are the builder's.
    """

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self._build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: AEOTClient, owner: type | None = None) -> Callable[P, T]: ...

    @overload
    def __get__(
        self, client: AsyncAEOTClient, owner: type | None = None
    ) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self

        @functools.wraps(self._build)
        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return client._run(self._build(*args, **kwargs))

        return bound


def _npy_sample(response: httpx.Response) -> Sample:
    latents = np.load(io.BytesIO(response.content), allow_pickle=False)
    return Sample(
        latents=latents,
        version=int(response.headers["X-Potential-Version"]),
        model=response.headers["X-Model"],
    )


def _image(response: httpx.Response) -> Image.Image:
    return Image.open(io.BytesIO(response.content))


def _json(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json())


def _interp_result(response: httpx.Response) -> InterpolationResult:
    data = response.json()
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


def _npy(response: httpx.Response) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(response.content), allow_pickle=False))


def _sample_call(
    n: int,
    seed: int,
    extended: bool,
    model: str | None,
    fmt: str,
    version: int | None,
    label: int | None,
) -> dict[str, Any]:
    return _params(
        n=n, seed=seed, extended=extended, model=model, format=fmt, version=version, label=label
    )


def _images_body(images: Any, **options: Any) -> dict[str, Any]:
    """``images``: an array ``(n, C, H, W)`` in [0, 1], or a list of PNG file bytes."""
    if isinstance(images, list | tuple) and images and isinstance(images[0], bytes):
        return _params(png=[base64.b64encode(b).decode() for b in images], **options)
    return _params(images=np.asarray(images, np.float32).tolist(), **options)


class _Api:
    """Every API method, once; see the module docstring."""

    @endpoint
    def sample_with_version(
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> Call[Sample]:
        """``n`` latents (``.npy`` transfer) and the potential version that made them.

        ``version`` pins a published potential; ``label`` samples only that class's cells.
        """
        params = _sample_call(n, seed, extended, model, "npy", version, label)
        return Call(method="GET", path="/sample", params=params, parse=_npy_sample)

    @endpoint
    def sample(
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> Call[np.ndarray]:
        """``n`` latents, shape ``(n, d)``, float32."""
        params = _sample_call(n, seed, extended, model, "npy", version, label)
        return Call(
            method="GET", path="/sample", params=params, parse=lambda r: _npy_sample(r).latents
        )

    @endpoint
    def sample_images(
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> Call[Image.Image]:
        """``n`` decoded samples as one PNG grid."""
        params = _sample_call(n, seed, extended, model, "png", version, label)
        return Call(method="GET", path="/sample", params=params, parse=_image)

    @endpoint
    def interpolate(
        start: Any = None,
        end: Any = None,
        steps: int = 16,
        *,
        model: str | None = None,
        images: bool = True,
        version: int | None = None,
        label: int | None = None,
        seed: int | None = None,
    ) -> Call[InterpolationResult]:
        """Interpolate between points (arrays), training indices (ints) or a class's cells.

        With ``label`` and no endpoints, ``seed`` chooses two cells of that class. The strip
        (``images``) has a red bar between the frames where a singular crossing lies.
        """
        body: dict[str, Any] = {"steps": steps, "images": images, "model": model}
        body.update(version=version, label=label, seed=seed)
        if start is None and end is None:
            pass  # label= picks the endpoints
        elif isinstance(start, int | np.integer) and isinstance(end, int | np.integer):
            body.update(start_index=int(start), end_index=int(end))
        else:
            start_point, end_point = np.asarray(start, float), np.asarray(end, float)
            body.update(start=start_point.tolist(), end=end_point.tolist())
        return Call(method="POST", path="/interpolate", json=_params(**body), parse=_interp_result)

    @endpoint
    def singularities(
        *, model: str | None = None, limit: int = 100, version: int | None = None
    ) -> Call[dict[str, Any]]:
        """Singular set summary (threshold, rule, counts, pairs)."""
        params = _params(model=model, limit=limit, version=version)
        return Call(method="GET", path="/singularities", params=params, parse=_json)

    @endpoint
    def singularities_image(
        *, model: str | None = None, version: int | None = None
    ) -> Call[Image.Image]:
        """The singular set as a picture: 2D power diagram, or angle histogram + image pairs."""
        params = _params(model=model, format="png", version=version)
        return Call(method="GET", path="/singularities", params=params, parse=_image)

    @endpoint
    def encode(
        images: Any, *, model: str | None = None, version: int | None = None
    ) -> Call[np.ndarray]:
        """Latent codes ``(n, d)`` of images: an array ``(n, C, H, W)`` or PNG file bytes."""
        body = _images_body(images, format="npy", model=model, version=version)
        return Call(method="POST", path="/encode", json=body, parse=_npy)

    @endpoint
    def decode(
        latents: Any, *, model: str | None = None, version: int | None = None
    ) -> Call[np.ndarray]:
        """Images ``(n, C, H, W)`` in [0, 1] of latent codes ``(n, d)``."""
        z = np.asarray(latents, np.float32).tolist()
        body = _params(latents=z, format="npy", model=model, version=version)
        return Call(method="POST", path="/decode", json=body, parse=_npy)

    @endpoint
    def decode_images(
        latents: Any, *, model: str | None = None, version: int | None = None
    ) -> Call[Image.Image]:
        """Decoded latent codes as one PNG grid."""
        z = np.asarray(latents, np.float32).tolist()
        body = _params(latents=z, format="png", model=model, version=version)
        return Call(method="POST", path="/decode", json=body, parse=_image)

    @endpoint
    def reconstruct(
        images: Any, *, model: str | None = None, version: int | None = None
    ) -> Call[np.ndarray]:
        """Decoder(encoder(images)): ``(n, C, H, W)`` in [0, 1]."""
        body = _images_body(images, format="npy", model=model, version=version)
        return Call(method="POST", path="/reconstruct", json=body, parse=_npy)

    @endpoint
    def reconstruct_image(
        images: Any, *, model: str | None = None, version: int | None = None
    ) -> Call[Image.Image]:
        """Originals (top row) above their reconstructions (bottom row), one PNG."""
        body = _images_body(images, format="png", model=model, version=version)
        return Call(method="POST", path="/reconstruct", json=body, parse=_image)

    @endpoint
    def models() -> Call[dict[str, Any]]:
        """``/models``: every model, the default one, active jobs."""
        return Call(method="GET", path="/models", parse=_json)

    @endpoint
    def model(name: str) -> Call[dict[str, Any]]:
        """``/models/{name}``: status and fit progress."""
        return Call(method="GET", path=f"/models/{name}", parse=_json)

    @endpoint
    def register(name: str, archive: bytes) -> Call[dict[str, Any]]:
        """Upload a bundle archive (tar/zip) as model ``name`` (needs the API key)."""
        files = {"bundle": ("bundle.tar.gz", archive, "application/octet-stream")}
        return Call(method="POST", path="/models", data={"name": name}, files=files, parse=_json)

    @endpoint
    def refit(name: str, **options: Any) -> Call[dict[str, Any]]:
        """Queue a refit of ``name``.

        Options: target_l1, seed, max_iter, time_budget, method, singular_rule, replace.
        """
        return Call(method="POST", path=f"/models/{name}/fit", json=options, parse=_json)

    @endpoint
    def train(name: str, dataset: str, **options: Any) -> Call[dict[str, Any]]:
        """Queue training ``name`` on ``dataset`` (relative to the server's data root; key).

        Options: split, subset, latent_dim, arch, epochs, decoder_epochs, decoder_schedule,
        image_size, channels, seed. Returns the job; its epoch and loss show in ``models()``.
        """
        body = {"dataset": dataset, **{k: v for k, v in options.items() if v is not None}}
        return Call(method="POST", path=f"/models/{name}/train", json=body, parse=_json)

    @endpoint
    def delete(name: str) -> Call[None]:
        """Delete a model (needs the API key)."""
        return Call(method="DELETE", path=f"/models/{name}", parse=lambda r: None)

    @endpoint
    def ready() -> Call[bool]:
        """Whether ``/readyz`` answers 200."""
        return Call(method="GET", path="/readyz", check=False, parse=lambda r: r.status_code == 200)


def _send_args(call: Call[Any]) -> dict[str, Any]:
    return {
        "params": call.params,
        "json": call.json,
        "data": call.data,
        "files": call.files,
    }


class AEOTClient(_Api):
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

    def _run(self, call: Call[T]) -> T:
        response = self._http.request(call.method, call.path, **_send_args(call))
        return call.parse(_check(response) if call.check else response)

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


class AsyncAEOTClient(_Api):
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

    async def _run(self, call: Call[T]) -> T:
        response = await self._http.request(call.method, call.path, **_send_args(call))
        return call.parse(_check(response) if call.check else response)

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
