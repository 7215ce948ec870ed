"""Every HTTP operation of the API written once: the request and how to read its answer.

:class:`Calls` builds a :class:`Call` per operation; :mod:`service.client` sends them with a
sync or an async httpx client, so the two clients share one definition of each operation.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image


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


def check(response: httpx.Response) -> httpx.Response:
    """Return a successful response; raise :class:`AEOTError` with the server's message."""
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


@dataclass(frozen=True, kw_only=True)
class Call:
    """One HTTP request of the API and how to read its (successful) answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], Any]
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def send_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` (and the async one)."""
        out = {"params": self.params, "json": self.json, "data": self.data, "files": self.files}
        return {k: v for k, v in out.items() if v is not None}


def _json(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json())


def _image(response: httpx.Response) -> Image.Image:
    return Image.open(io.BytesIO(response.content))


def _npy(response: httpx.Response) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(response.content), allow_pickle=False))


def _nothing(response: httpx.Response) -> None:
    return None


def _interp_body(start: Any, end: Any, steps: int, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"steps": steps, **options}
    if start is None and end is None:
        pass  # label= picks the endpoints
    elif isinstance(start, int | np.integer) and isinstance(end, int | np.integer):
        body.update(start_index=int(start), end_index=int(end))
    else:
        body.update(start=np.asarray(start, float).tolist(), end=np.asarray(end, float).tolist())
    return _params(**body)


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


def _sample_result(response: httpx.Response) -> Sample:
    return Sample(
        latents=_npy(response),
        version=int(response.headers["X-Potential-Version"]),
        model=response.headers["X-Model"],
    )


def _images_body(images: Any, **options: Any) -> dict[str, Any]:
    """``images``: an array ``(n, C, H, W)`` in [0, 1], or a list of PNG file bytes."""
    if isinstance(images, list | tuple) and images and isinstance(images[0], bytes):
        return _params(png=[base64.b64encode(b).decode() for b in images], **options)
    return _params(images=np.asarray(images, np.float32).tolist(), **options)


class Calls:
    """Every operation of the API, written once (see the module docstring)."""

    @staticmethod
    def sample_with_version(n: int, seed: int, **options: Any) -> Call:
        """GET /sample as ``.npy``: latents and the version that made them."""
        params = _params(n=n, seed=seed, format="npy", **options)
        return Call(method="GET", path="/sample", params=params, read=_sample_result)

    @staticmethod
    def sample_images(n: int, seed: int, **options: Any) -> Call:
        """GET /sample as ``.npy``: latents and the version that made them."""
        params = _params(n=n, seed=seed, format="png", **options)
        return Call(method="GET", path="/sample", params=params, read=_image)

    @staticmethod
    def interpolate(start: Any, end: Any, steps: int, **options: Any) -> Call:
        """GET /sample as a PNG grid."""
        body = _interp_body(start, end, steps, **options)
        return Call(method="POST", path="/interpolate", json=body, read=_interp_result)

    @staticmethod
    def singularities(**options: Any) -> Call:
        """POST /interpolate between points, training indices or a class's cells."""
        return Call(method="GET", path="/singularities", params=_params(**options), read=_json)

    @staticmethod
    def singularities_image(**options: Any) -> Call:
        """GET /singularities as JSON."""
        params = _params(format="png", **options)
        return Call(method="GET", path="/singularities", params=params, read=_image)

    @staticmethod
    def encode(images: Any, **options: Any) -> Call:
        """GET /singularities as a picture."""
        body = _images_body(images, format="npy", **options)
        return Call(method="POST", path="/encode", json=body, read=_npy)

    @staticmethod
    def decode(latents: Any, fmt: str, **options: Any) -> Call:
        """POST /encode: codes ``(n, d)`` as ``.npy``."""
        z = np.asarray(latents, np.float32).tolist()
        body = _params(latents=z, format=fmt, **options)
        return Call(method="POST", path="/decode", json=body, read=_image if fmt == "png" else _npy)

    @staticmethod
    def reconstruct(images: Any, fmt: str, **options: Any) -> Call:
        """POST /decode: images as ``.npy`` (``fmt='npy'``) or a PNG grid (``'png'``)."""
        body = _images_body(images, format=fmt, **options)
        read = _image if fmt == "png" else _npy
        return Call(method="POST", path="/reconstruct", json=body, read=read)

    @staticmethod
    def models() -> Call:
        """POST /reconstruct: images as ``.npy`` or the comparison PNG."""
        return Call(method="GET", path="/models", read=_json)

    @staticmethod
    def model(name: str) -> Call:
        """GET /models."""
        return Call(method="GET", path=f"/models/{name}", read=_json)

    @staticmethod
    def register(name: str, archive: bytes) -> Call:
        """GET /models/{name}."""
        files = {"bundle": ("bundle.tar.gz", archive, "application/octet-stream")}
        return Call(method="POST", path="/models", data={"name": name}, files=files, read=_json)

    @staticmethod
    def refit(name: str, options: dict[str, Any]) -> Call:
        """POST /models: upload a bundle archive."""
        return Call(method="POST", path=f"/models/{name}/fit", json=options, read=_json)

    @staticmethod
    def delete(name: str) -> Call:
        """POST /models/{name}/fit."""
        return Call(method="DELETE", path=f"/models/{name}", read=_nothing)
