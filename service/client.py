"""Python clients of the service on httpx: :class:`AEOTClient` (sync), :class:`AsyncAEOTClient`.

Both return numpy arrays for latents, PIL images for pictures and plain dicts for status; an
HTTP error raises :class:`AEOTError` carrying the status code and the server's message.

What a script meets is handled here:

- **Light install.** This module needs httpx alone (``pip install aeot``); the methods that
  return arrays or images need numpy and pillow (``pip install 'aeot[client]'``) and raise
  :class:`MissingExtra` saying so when they are absent. :meth:`AEOTClient.fetch` returns any
  method's response as the server sent it (a PNG or ``.npy`` file to save) without them.
- **Retries.** A 503 (the model is still training, or has no fitted potential yet) is sent
  again up to ``retries`` times, after the server's ``Retry-After`` or else ``backoff``
  seconds doubling each time, every wait capped at ``max_backoff``. Other errors are not
  retried; :meth:`AEOTClient.ready` never is (it is the readiness probe).
- **Timeouts.** ``timeout`` seconds for each of connecting, sending, and each read.
- **Paging.** One ``/sample`` call answers at most the server's ``max_n`` samples, which the
  server publishes as the maximum of ``n`` in its OpenAPI schema. :meth:`AEOTClient.sample`
  asks for more in pages of that size, each starting at the ``offset`` where the previous one
  ended in the seed's sample stream and pinned to the first page's model and potential
  version, so the pages concatenate to exactly the samples one call for all of them would
  give (same seed, same output); :meth:`AEOTClient.iter_samples` yields the pages as they come.

Each API method is written once, in :class:`_Api`, as a function that says which request to
send and how to read its answer (a :class:`Call`); :class:`endpoint` turns it into a method of
both clients, which differ only in how they send a call (:meth:`AEOTClient._run` blocks,
:meth:`AsyncAEOTClient._run` is awaited). A method of several requests is a *plan*, a
generator that yields calls and receives their results (:class:`paged`, :class:`joined`).

Example:
    >>> with AEOTClient("http://127.0.0.1:8000", retries=10) as client:  # doctest: +SKIP
    ...     client.wait_ready(timeout=120)
    ...     latents = client.sample(64, seed=1)            # (64, d) float32
    ...     grid = client.sample_images(16, seed=1)        # PIL image
    ...     png = client.fetch(AEOTClient.sample_images, 16, seed=1).content  # PNG bytes

"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import inspect
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeAlias, TypeVar, overload

import httpx

try:
    import numpy as np
except ModuleNotFoundError:  # the light install: array results say what to install
    np = None  # type: ignore[assignment]
try:
    from PIL import Image
except ModuleNotFoundError:  # the light install: image results say what to install
    Image = None  # type: ignore[assignment]

DEFAULT_TIMEOUT = 60.0
# 503 retries by default: with the server's Retry-After of 5 s, about 25 s of waiting.
DEFAULT_RETRIES = 5
CLIENT_EXTRA = "pip install 'aeot[client]'"


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


class MissingExtra(ModuleNotFoundError):
    """A result needs a package this install lacks; the message says what to install."""


def _require(module: object, package: str, what: str) -> None:
    if module is None:
        raise MissingExtra(
            f"{what} need {package}, which this install lacks: {CLIENT_EXTRA}", name=package
        )


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


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), ``None`` when absent."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    with suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = str(response.json().get("detail", response.text))
    except ValueError:
        detail = response.text
    raise AEOTError(response.status_code, detail, _retry_after(response))


@dataclass(frozen=True)
class _Retry:
    """When to send a call again after a 503, and after how long."""

    retries: int
    backoff: float
    max_backoff: float

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(
                f"retries, backoff and max_backoff must be >= 0, got {self.retries}, "
                f"{self.backoff}, {self.max_backoff}"
            )

    def delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (``None``: answer as it is)."""
        if response.status_code != 503 or attempt >= self.retries:
            return None
        after = _retry_after(response)
        wait = self.backoff * 2**attempt if after is None else after
        return min(wait, self.max_backoff)


def _params(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


@dataclass(frozen=True, kw_only=True)
class Call(Generic[T]):
    """One request to send and how to read its answer.

    Attributes:
        method: HTTP method. path: URL path. parse: turns the (checked) response into the
        method's result. params, json, data, files: as httpx takes them.
        check: raise :class:`AEOTError` for an error status before parsing (and retry 503s).
        memo: the answer holds for the client's life: sent once, then remembered.
        page: in a plan, a result the paged method yields (see :class:`paged`).

    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    check: bool = True
    memo: bool = False
    page: bool = False


# A method of several requests: yields calls, receives each one's parsed result.
Plan: TypeAlias = Generator[Call[Any], Any, None]


class endpoint(Generic[P, T]):  # used as a decorator, like property
    """An API method written once as ``build(*args) -> Call``; a method of both clients.

    On :class:`AEOTClient` it returns the parsed result; on :class:`AsyncAEOTClient` an
    awaitable of it. Its name, docstring and signature are the builder's. On the class it is
    this object, which :meth:`AEOTClient.fetch` takes to send the call and return the response.
    """

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self._build = build
        self.__doc__ = build.__doc__

    def request(self, *args: P.args, **kwargs: P.kwargs) -> Call[T]:
        """The call this method sends for these arguments, unsent."""
        return self._build(*args, **kwargs)

    @overload
    def __get__(self, client: None, owner: type | None = None) -> endpoint[P, T]: ...

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


class paged(Generic[P, T]):  # used as a decorator
    """An API method of one request per page, written once as a plan (see :data:`Plan`).

    The plan yields calls and receives their results; the results of calls marked ``page``
    are the pages. On :class:`AEOTClient` the method returns an iterator of the pages, on
    :class:`AsyncAEOTClient` an async iterator; no request is sent before the first page is
    asked for. ``T`` is the type of a page.
    """

    def __init__(self, plan: Callable[P, Plan]) -> None:
        self._plan = plan
        self.__doc__ = plan.__doc__

    @overload
    def __get__(self, client: None, owner: type | None = None) -> paged[P, T]: ...

    @overload
    def __get__(
        self, client: AEOTClient, owner: type | None = None
    ) -> Callable[P, Iterator[T]]: ...

    @overload
    def __get__(
        self, client: AsyncAEOTClient, owner: type | None = None
    ) -> Callable[P, AsyncIterator[T]]: ...

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self

        @functools.wraps(self._plan)
        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return client._pages(self._plan(*args, **kwargs))

        return bound

    def pages(self, client: Any, *args: Any, **kwargs: Any) -> Any:
        """``client``'s pages for these arguments (an iterator, or an async one)."""
        return client._pages(self._plan(*args, **kwargs))


def pages_of(kind: type[T]) -> Callable[[Callable[P, Plan]], paged[P, T]]:
    """``@pages_of(Sample)``: :class:`paged` with its page type spelled for the type checker."""

    def make(plan: Callable[P, Plan]) -> paged[P, T]:
        return paged(plan)

    return make


class joined(Generic[P, T, R]):  # used as a decorator
    """An API method that joins every page of a :class:`paged` one into one result.

    Decorates ``join(pages) -> R``, which gives the method its name, docstring and result
    type; the arguments are the paged method's. On :class:`AsyncAEOTClient` it is awaitable.
    """

    def __init__(self, source: paged[P, T], join: Callable[[list[T]], R]) -> None:
        self._source = source
        self._join = join
        self.__doc__ = join.__doc__
        plan_signature = inspect.signature(source._plan)
        self._signature = plan_signature.replace(
            return_annotation=inspect.signature(join).return_annotation
        )

    @classmethod
    def of(cls, source: paged[P, T]) -> Callable[[Callable[[list[T]], R]], joined[P, T, R]]:
        """``@joined.of(iter_samples)`` over ``def sample(pages) -> R``."""

        def make(join: Callable[[list[T]], R]) -> joined[P, T, R]:
            return cls(source, join)

        return make

    @overload
    def __get__(self, client: None, owner: type | None = None) -> joined[P, T, R]: ...

    @overload
    def __get__(self, client: AEOTClient, owner: type | None = None) -> Callable[P, R]: ...

    @overload
    def __get__(
        self, client: AsyncAEOTClient, owner: type | None = None
    ) -> Callable[P, Awaitable[R]]: ...

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self

        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return client._joined(self._source.pages(client, *args, **kwargs), self._join)

        functools.update_wrapper(bound, self._join)
        bound.__signature__ = self._signature  # type: ignore[attr-defined]
        return bound


def _npy_sample(response: httpx.Response) -> Sample:
    _require(np, "numpy", "latent arrays")
    latents = np.load(io.BytesIO(response.content), allow_pickle=False)
    return Sample(
        latents=latents,
        version=int(response.headers["X-Potential-Version"]),
        model=response.headers["X-Model"],
    )


def _image(response: httpx.Response) -> Image.Image:
    _require(Image, "pillow", "PIL images")
    return Image.open(io.BytesIO(response.content))


def _json(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json())


def _interp_result(response: httpx.Response) -> InterpolationResult:
    _require(np, "numpy", "interpolation arrays")
    data = response.json()
    strip = None
    if data.get("strip_png"):
        _require(Image, "pillow", "PIL images")
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
    _require(np, "numpy", "latent and image arrays")
    return np.asarray(np.load(io.BytesIO(response.content), allow_pickle=False))


def _sample_limit(response: httpx.Response) -> int | None:
    """The maximum of ``n`` on ``/sample`` in the server's OpenAPI schema (its ``max_n``)."""
    if not response.is_success:
        return None
    try:
        schemas = response.json()["components"]["schemas"]
        limit = schemas["SampleRequest"]["properties"]["n"]["maximum"]
    except (ValueError, KeyError, TypeError):
        return None
    return limit if isinstance(limit, int) and limit >= 1 else None


_LIMIT_CALL: Call[int | None] = Call(
    method="GET", path="/openapi.json", parse=_sample_limit, check=False, memo=True
)


def _sample_pages(fmt: str, n: int, start: int, query: dict[str, Any]) -> Plan:
    """The plan of a paged sample: the server's limit, then pages from consecutive offsets.

    The samples are ``start .. start + n - 1`` of the seed's stream; ``query``: the other
    ``/sample`` parameters. Pages after the first are pinned to the first one's model and
    potential version, so a publication or a change of default model between pages cannot
    mix two maps.
    """
    limit = yield _LIMIT_CALL
    size = n if limit is None else min(n, limit)
    parse = _npy_sample if fmt == "npy" else _json
    offset = start
    while True:
        # offset 0 is left out: servers without paging take the first page.
        params = _params(n=size, offset=offset or None, format=fmt, **query)
        page = yield Call(method="GET", path="/sample", params=params, parse=parse, page=True)
        offset += size
        if offset >= start + n:
            return
        pinned = vars(page) if fmt == "npy" else page
        query.update(model=pinned["model"], version=pinned["version"])
        size = min(size, start + n - offset)


def _join_samples(pages: list[Sample]) -> Sample:
    if len(pages) == 1:
        return pages[0]
    first = pages[0]
    latents = np.concatenate([p.latents for p in pages])
    return Sample(latents=latents, version=first.version, model=first.model)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) or (np is not None and isinstance(value, np.integer))


def _floats(value: Any, dtype: str = "float32") -> Any:
    """An array-like as nested lists of ``dtype``-rounded floats, for a JSON body."""
    if np is None:  # lists (or tuples) of numbers go as they are; the server checks them
        return value
    return np.asarray(value, dtype).tolist()


def _images_body(images: Any, **options: Any) -> dict[str, Any]:
    """``images``: an array ``(n, C, H, W)`` in [0, 1], or a list of PNG file bytes."""
    if isinstance(images, list | tuple) and images and isinstance(images[0], bytes):
        return _params(png=[base64.b64encode(b).decode() for b in images], **options)
    return _params(images=_floats(images), **options)


class _Api:
    """Every API method, once; see the module docstring."""

    @pages_of(Sample)
    def iter_samples(
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
        offset: int = 0,
    ) -> Plan:
        """``n`` latents as pages of at most the server's limit, each a :class:`Sample`.

        The pages come from one model and potential version (the first page's, unless
        ``version`` pins one) and concatenate to the latents one request for ``n`` gives;
        ``offset`` starts at that sample of the seed's stream.
        """
        _require(np, "numpy", "latent arrays")
        query = dict(seed=seed, extended=extended, model=model, version=version, label=label)
        yield from _sample_pages("npy", n, offset, query)

    @pages_of(dict)
    def iter_samples_json(
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
        offset: int = 0,
    ) -> Plan:
        """:meth:`iter_samples` as the server's JSON answers (dicts, latents as lists of floats).

        Needs no numpy: what the light install's ``aeot sample out.json`` writes.
        """
        query = dict(seed=seed, extended=extended, model=model, version=version, label=label)
        yield from _sample_pages("json", n, offset, query)

    @joined.of(iter_samples)
    def sample_with_version(pages: list[Sample]) -> Sample:
        """``n`` latents (``.npy`` transfer) and the potential version that made them.

        ``version`` pins a published potential; ``label`` samples only that class's cells.
        More than the server's limit come in pages (:meth:`iter_samples`), joined here.
        """
        return _join_samples(pages)

    @joined.of(iter_samples)
    def sample(pages: list[Sample]) -> np.ndarray:
        """``n`` latents, shape ``(n, d)``, float32 (in pages beyond the server's limit)."""
        return _join_samples(pages).latents

    @endpoint
    def sample_limit() -> Call[int | None]:
        """The most samples one request answers (the server's ``max_n``; ``None``: unknown).

        Read once from the server's OpenAPI schema, then remembered.
        """
        return _LIMIT_CALL

    @endpoint
    def sample_images(
        n: int,
        seed: int = 0,
        *,
        extended: bool = True,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
        offset: int = 0,
    ) -> Call[Image.Image]:
        """``n`` decoded samples as one PNG grid (at most the server's ``max_images``)."""
        query = dict(seed=seed, extended=extended, model=model, version=version, label=label)
        params = _params(n=n, offset=offset or None, format="png", **query)
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
        elif _is_index(start) and _is_index(end):
            body.update(start_index=int(start), end_index=int(end))
        else:
            body.update(start=_floats(start, "float64"), end=_floats(end, "float64"))
        return Call(method="POST", path="/interpolate", json=_params(**body), parse=_interp_result)

    @endpoint
    def singularities(
        *,
        model: str | None = None,
        limit: int = 100,
        version: int | None = None,
        images: bool = False,
    ) -> Call[dict[str, Any]]:
        """Singular set summary (threshold, rule, frame and unit of the scores, counts, pairs).

        ``images``: each listed pair carries its two decoded codes as a base64 PNG.
        """
        params = _params(model=model, limit=limit, version=version, images=images or None)
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
        body = _params(latents=_floats(latents), format="npy", model=model, version=version)
        return Call(method="POST", path="/decode", json=body, parse=_npy)

    @endpoint
    def decode_images(
        latents: Any, *, model: str | None = None, version: int | None = None
    ) -> Call[Image.Image]:
        """Decoded latent codes as one PNG grid."""
        body = _params(latents=_floats(latents), format="png", model=model, version=version)
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
    def delete(name: str) -> Call[dict[str, Any] | None]:
        """Delete a model (needs the API key).

        Returns ``None`` when a model was deleted; the cancelled training job when the name
        was only being trained (the server answered 202).
        """
        return Call(
            method="DELETE",
            path=f"/models/{name}",
            parse=lambda r: r.json() if r.status_code == 202 else None,
        )

    @endpoint
    def ready() -> Call[bool]:
        """Whether ``/readyz`` answers 200 (never retried)."""
        return Call(method="GET", path="/readyz", check=False, parse=lambda r: r.status_code == 200)


def _send_args(call: Call[Any]) -> dict[str, Any]:
    return {"params": call.params, "json": call.json, "data": call.data, "files": call.files}


def _memo_key(call: Call[Any]) -> tuple[str, str]:
    return call.method, call.path


class _Client(_Api):
    """What both clients share: settings, the retry policy, the remembered answers."""

    def __init__(
        self, *, api_key: str | None, retries: int, backoff: float, max_backoff: float
    ) -> None:
        self._headers = {"X-API-Key": api_key} if api_key else {}
        self._retry = _Retry(retries, backoff, max_backoff)
        self._memo: dict[tuple[str, str], Any] = {}


class AEOTClient(_Client):
    """Synchronous client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` (needed for register / refit / delete).
        timeout: seconds for each of connecting, sending and each read (``None``: no limit;
            an ``httpx.Timeout`` sets them apart); past it ``httpx.TimeoutException``.
        retries: times a call answered 503 is sent again (0: never); then :class:`AEOTError`.
        backoff: seconds before the first retry when the server sends no ``Retry-After``,
            doubled for each further one.
        max_backoff: seconds at most before any retry (also caps ``Retry-After``).
        transport: an httpx transport (tests pass ``httpx.ASGITransport`` or a WSGI one).

    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key=api_key, retries=retries, backoff=backoff, max_backoff=max_backoff)
        self._http = httpx.Client(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> AEOTClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: Call[Any]) -> httpx.Response:
        attempt = 0
        while True:
            response = self._http.request(call.method, call.path, **_send_args(call))
            wait = self._retry.delay(response, attempt) if call.check else None
            if wait is None:
                return response
            time.sleep(wait)
            attempt += 1

    def _run(self, call: Call[T]) -> T:
        if call.memo and _memo_key(call) in self._memo:
            return self._memo[_memo_key(call)]  # type: ignore[no-any-return]
        response = self._send(call)
        result = call.parse(_check(response) if call.check else response)
        if call.memo:
            self._memo[_memo_key(call)] = result
        return result

    def _pages(self, plan: Plan) -> Iterator[Any]:
        result = None
        while True:
            try:
                call = plan.send(result)
            except StopIteration:
                return
            result = self._run(call)
            if call.page:
                yield result

    def _joined(self, pages: Iterator[T], join: Callable[[list[T]], R]) -> R:
        return join(list(pages))

    def fetch(self, method: endpoint[P, Any], *args: P.args, **kwargs: P.kwargs) -> httpx.Response:
        """Send an API method's request and return the response as it came (error: raise).

        ``client.fetch(AEOTClient.sample_images, 16, seed=1).content`` is the PNG file the
        server sent: no pillow or numpy needed, and retried like the method itself.
        """
        call = method.request(*args, **kwargs)
        response = self._send(call)
        return _check(response) if call.check else response

    def wait_ready(self, timeout: float = 300.0, interval: float = 1.0) -> None:
        """Poll ``/readyz`` until ready; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(httpx.TransportError):  # the server is still starting
                if self.ready():
                    return
            time.sleep(interval)
        raise TimeoutError(f"service not ready after {timeout:.0f} s")


class AsyncAEOTClient(_Client):
    """Asynchronous client with the same methods as :class:`AEOTClient` (awaitable)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key=api_key, retries=retries, backoff=backoff, max_backoff=max_backoff)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncAEOTClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: Call[Any]) -> httpx.Response:
        attempt = 0
        while True:
            response = await self._http.request(call.method, call.path, **_send_args(call))
            wait = self._retry.delay(response, attempt) if call.check else None
            if wait is None:
                return response
            await asyncio.sleep(wait)
            attempt += 1

    async def _run(self, call: Call[T]) -> T:
        if call.memo and _memo_key(call) in self._memo:
            return self._memo[_memo_key(call)]  # type: ignore[no-any-return]
        response = await self._send(call)
        result = call.parse(_check(response) if call.check else response)
        if call.memo:
            self._memo[_memo_key(call)] = result
        return result

    async def _pages(self, plan: Plan) -> AsyncIterator[Any]:
        result = None
        while True:
            try:
                call = plan.send(result)
            except StopIteration:
                return
            result = await self._run(call)
            if call.page:
                yield result

    async def _joined(self, pages: AsyncIterator[T], join: Callable[[list[T]], R]) -> R:
        return join([page async for page in pages])

    async def fetch(
        self, method: endpoint[P, Any], *args: P.args, **kwargs: P.kwargs
    ) -> httpx.Response:
        """Send an API method's request and return the response as it came (error: raise).

        ``(await client.fetch(AEOTClient.sample_images, 16, seed=1)).content`` is the PNG
        file the server sent: no pillow or numpy needed, and retried like the method itself.
        """
        call = method.request(*args, **kwargs)
        response = await self._send(call)
        return _check(response) if call.check else response

    async def wait_ready(self, timeout: float = 300.0, interval: float = 1.0) -> None:
        """Poll ``/readyz`` until ready; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(httpx.TransportError):
                if await self.ready():
                    return
            await asyncio.sleep(interval)
        raise TimeoutError(f"service not ready after {timeout:.0f} s")
