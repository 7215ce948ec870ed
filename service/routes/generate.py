"""Generation endpoints (thin: validate, call, shape).

/sample, /interpolate, /singularities, and the autoencoder's /encode, /decode, /reconstruct.
Every response names the potential version it came from (``X-Potential-Version``); with the
same version and seed the body is the same, and ``version=`` pins a published one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service import operations as ops
from service.bodies import JSONRoute
from service.deps import ReadAccess, ServingDep, SettingsDep, resolve_model
from service.errors import error_responses
from service.images import crossing_gaps, to_png
from service.schemas import (
    SCORE_UNITS,
    CrossingOut,
    DecodeRequest,
    EncodeRequest,
    ImagesResponse,
    InterpolateQuery,
    InterpolateRequest,
    InterpolateResponse,
    LatentsResponse,
    ReconstructRequest,
    SampleQuery,
    SampleRequest,
    SampleResponse,
    SingularitiesQuery,
    SingularitiesResponse,
)
from service.serving_index import Served

router = APIRouter(dependencies=[ReadAccess], tags=["generate"], route_class=JSONRoute)
# Its own router, so Swagger lists each autoencoder route once (a route's tags add to its
# router's, and two tags show it twice).
autoencoder = APIRouter(dependencies=[ReadAccess], tags=["autoencoder"], route_class=JSONRoute)

_ERRORS = error_responses(401, 403, 404, 422, 503)
_POST_ERRORS = error_responses(401, 403, 404, 413, 422, 503)


def _media(*types: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer's media types besides JSON (its schema is the route's response model)."""
    return {200: {"content": {t: {} for t in types}}}


_SAMPLE = {**_media("application/x-npy", "image/png"), **_ERRORS}
# The POST answers of /sample, /decode and /reconstruct: JSON, .npy or PNG.
_IMAGES_POST = {**_media("application/x-npy", "image/png"), **_POST_ERRORS}
_PNG = {**_media("image/png"), **_ERRORS}
_PNG_POST = {**_media("image/png"), **_POST_ERRORS}
_NPY_POST = {**_media("application/x-npy"), **_POST_ERRORS}


def _answer(
    served: Served,
    fmt: str,
    body: Callable[[], BaseModel],
    *,
    npy: Callable[[], np.ndarray] | None = None,
    png: Callable[[], bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The one format dispatch of the generation routes: ``json``, ``npy`` or ``png``.

    Only the requested answer is computed (each is a callable); every answer names the model
    and potential version it came from. The request models allow only the formats a route
    gives, so the callable a format needs is there.
    """
    headers = {
        "X-Model": served.name,
        "X-Potential-Version": str(served.version),
        **(headers or {}),
    }
    if fmt == "npy" and npy is not None:
        return Response(ops.npy_bytes(npy()), media_type="application/x-npy", headers=headers)
    if fmt == "png" and png is not None:
        return Response(png(), media_type="image/png", headers=headers)
    return JSONResponse(body().model_dump(), headers=headers)


def _served(name: str | None, version: int | None, serving: ServingDep) -> Served:
    """The model (default one when unnamed) at the served or the pinned version."""
    return serving.get(resolve_model(name, serving), version)


def _sample(req: SampleRequest, settings: SettingsDep, serving: ServingDep) -> Response:
    served = _served(req.model, req.version, serving)
    latents = ops.sample_latents(served, req, settings)
    return _answer(
        served,
        req.format,
        lambda: SampleResponse(
            model=served.name,
            version=served.version,
            seed=req.seed,
            offset=req.offset,
            extended=req.extended,
            label=req.label,
            latents=latents.tolist(),
        ),
        npy=lambda: latents,
        png=lambda: to_png(served.bundle.decode(latents)),
    )


@router.get("/sample", response_model=SampleResponse, responses=_SAMPLE)
def sample_get(
    req: Annotated[SampleQuery, Query()], settings: SettingsDep, serving: ServingDep
) -> Response:
    """Draw ``n`` samples (query parameters); JSON latents, ``.npy`` bytes or a PNG grid.

    ``label=`` samples only the cells of that class; ``version=`` pins a published potential.
    """
    return _sample(req, settings, serving)


@router.post("/sample", response_model=SampleResponse, responses=_IMAGES_POST)
def sample_post(req: SampleRequest, settings: SettingsDep, serving: ServingDep) -> Response:
    """Draw ``n`` samples (JSON body); JSON latents, ``.npy`` bytes or a PNG grid."""
    return _sample(req, settings, serving)


def _interpolate(req: InterpolateRequest, settings: SettingsDep, serving: ServingDep) -> Response:
    served = _served(req.model, req.version, serving)
    path = ops.interpolate(served, req, settings)
    gaps = crossing_gaps([c.t for c in path.crossings], len(path.t))
    crossings = [
        CrossingOut(t=c.t, from_cell=c.from_cell, to_cell=c.to_cell, angle=c.angle, gap=g)
        for c, g in zip(path.crossings, gaps, strict=True)
    ]
    frame = served.ext_map.singular_set.frame
    return _answer(
        served,
        req.format,
        lambda: InterpolateResponse(
            model=served.name,
            version=served.version,
            t=list(map(float, path.t)),
            z=path.z.tolist(),
            latents=path.latents.tolist(),
            cells=list(map(int, path.cells)),
            crossings=crossings,
            frame=frame,
            unit=SCORE_UNITS[frame],
            strip_png=ops.strip_base64(served, path) if req.images else None,
        ),
        png=lambda: ops.interpolation_png(served, path),
        headers={"X-Crossings": ",".join(f"{c.t:.6g}" for c in crossings)}
        if req.format == "png"
        else None,
    )


@router.get("/interpolate", response_model=InterpolateResponse, responses=_PNG)
def interpolate_get(
    req: Annotated[InterpolateQuery, Query()], settings: SettingsDep, serving: ServingDep
) -> Response:
    """Interpolate between source points, training codes or two cells of a class (``label``).

    JSON: frames, cells and the singular crossings; PNG: the decoded strip with a red bar
    between the frames where the segment crosses a singular facet.
    """
    return _interpolate(req, settings, serving)


@router.post("/interpolate", response_model=InterpolateResponse, responses=_PNG_POST)
def interpolate_post(
    req: InterpolateRequest, settings: SettingsDep, serving: ServingDep
) -> Response:
    """Interpolate between source points or training codes (JSON body)."""
    return _interpolate(req, settings, serving)


@router.get("/singularities", response_model=SingularitiesResponse, responses=_PNG)
def singularities(
    req: Annotated[SingularitiesQuery, Query()], settings: SettingsDep, serving: ServingDep
) -> Response:
    """Singular set summary: threshold and rule, counts, the most singular pairs.

    ``format=png``: the power diagram in 2D; in higher d the score histogram with the
    threshold and the most singular pairs as decoded image pairs.
    """
    served = _served(req.model, req.version, serving)
    summary = ops.singularities(served, req, settings)
    return _answer(
        served, req.format, lambda: summary, png=lambda: ops.singularities_png(served, summary)
    )


@autoencoder.post("/encode", response_model=LatentsResponse, responses=_NPY_POST)
def encode(req: EncodeRequest, settings: SettingsDep, serving: ServingDep) -> Response:
    """Encode images (nested arrays or base64 PNGs) to latent codes; JSON or ``.npy``."""
    served = _served(req.model, req.version, serving)
    latents = ops.encode(served, ops.input_images(served, req, settings))
    return _answer(
        served,
        req.format,
        lambda: LatentsResponse(
            model=served.name, version=served.version, latents=latents.tolist()
        ),
        npy=lambda: latents,
    )


def _images(served: Served, images: np.ndarray) -> ImagesResponse:
    return ImagesResponse(model=served.name, version=served.version, images=images.tolist())


@autoencoder.post("/decode", response_model=ImagesResponse, responses=_IMAGES_POST)
def decode(req: DecodeRequest, settings: SettingsDep, serving: ServingDep) -> Response:
    """Decode latent codes to images; a PNG grid, JSON arrays or ``.npy``."""
    served = _served(req.model, req.version, serving)
    images = ops.decode(served, req, settings)
    return _answer(
        served,
        req.format,
        lambda: _images(served, images),
        npy=lambda: images,
        png=lambda: to_png(images),
    )


@autoencoder.post("/reconstruct", response_model=ImagesResponse, responses=_IMAGES_POST)
def reconstruct(req: ReconstructRequest, settings: SettingsDep, serving: ServingDep) -> Response:
    """Encode and decode images: PNG (originals above reconstructions), JSON or ``.npy``."""
    served = _served(req.model, req.version, serving)
    images = ops.input_images(served, req, settings)
    out = served.bundle.decode(ops.encode(served, images))
    return _answer(
        served,
        req.format,
        lambda: _images(served, out),
        npy=lambda: out,
        png=lambda: ops.comparison_png(images, out),
    )
