"""Generation endpoints: /sample, /interpolate, /singularities (thin: validate, call, shape).

Every response names the potential version it came from (``X-Potential-Version``); with the
same version and seed the body is the same.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from service import operations as ops
from service.deps import ReadAccess, ServingDep, SettingsDep, StoreDep, resolve_model
from service.errors import error_responses
from service.schemas import (
    CrossingOut,
    InterpolateQuery,
    InterpolateRequest,
    InterpolateResponse,
    SampleQuery,
    SampleRequest,
    SampleResponse,
    SingularitiesQuery,
    SingularitiesResponse,
    SingularPairOut,
)
from service.serving import Served

router = APIRouter(dependencies=[ReadAccess], tags=["generate"])

_ERRORS = error_responses(401, 403, 404, 422, 503)
_POST_ERRORS = error_responses(401, 403, 404, 413, 422, 503)


def _media(*types: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer's media types besides JSON (its schema is the route's response model)."""
    return {200: {"content": {t: {} for t in types}}}


_SAMPLE = {**_media("application/x-npy", "image/png"), **_ERRORS}
_SAMPLE_POST = {**_media("application/x-npy", "image/png"), **_POST_ERRORS}
_PNG = {**_media("image/png"), **_ERRORS}
_PNG_POST = {**_media("image/png"), **_POST_ERRORS}


def _headers(served: Served) -> dict[str, str]:
    return {"X-Model": served.name, "X-Potential-Version": str(served.version)}


def _sample(
    req: SampleRequest, settings: SettingsDep, store: StoreDep, serving: ServingDep
) -> Response:
    served = serving.get(resolve_model(req.model, settings, store))
    latents = ops.sample_latents(served, req, settings)
    headers = _headers(served)
    if req.format == "npy":
        return Response(ops.npy_bytes(latents), media_type="application/x-npy", headers=headers)
    if req.format == "png":
        return Response(ops.images_png(served, latents), media_type="image/png", headers=headers)
    body = SampleResponse(
        model=served.name,
        version=served.version,
        seed=req.seed,
        extended=req.extended,
        latents=latents.tolist(),
    )
    return JSONResponse(body.model_dump(), headers=headers)


@router.get("/sample", response_model=SampleResponse, responses=_SAMPLE)
def sample_get(
    req: Annotated[SampleQuery, Query()],
    settings: SettingsDep,
    store: StoreDep,
    serving: ServingDep,
) -> Response:
    """Draw ``n`` samples (query parameters); JSON latents, ``.npy`` bytes or a PNG grid."""
    return _sample(req, settings, store, serving)


@router.post("/sample", response_model=SampleResponse, responses=_SAMPLE_POST)
def sample_post(
    req: SampleRequest, settings: SettingsDep, store: StoreDep, serving: ServingDep
) -> Response:
    """Draw ``n`` samples (JSON body); JSON latents, ``.npy`` bytes or a PNG grid."""
    return _sample(req, settings, store, serving)


def _interpolate(
    req: InterpolateRequest, settings: SettingsDep, store: StoreDep, serving: ServingDep
) -> Response:
    served = serving.get(resolve_model(req.model, settings, store))
    path = ops.interpolate(served, req, settings)
    crossings = [
        CrossingOut(t=c.t, from_cell=c.from_cell, to_cell=c.to_cell, angle=c.angle)
        for c in path.crossings
    ]
    headers = _headers(served)
    if req.format == "png":
        headers["X-Crossings"] = ",".join(f"{c.t:.6g}" for c in crossings)
        png = ops.images_png(served, path.latents, cols=len(path.t))
        return Response(png, media_type="image/png", headers=headers)
    body = InterpolateResponse(
        model=served.name,
        version=served.version,
        t=list(map(float, path.t)),
        z=path.z.tolist(),
        latents=path.latents.tolist(),
        cells=list(map(int, path.cells)),
        crossings=crossings,
        strip_png=ops.strip_base64(served, path.latents) if req.images else None,
    )
    return JSONResponse(body.model_dump(), headers=headers)


@router.get("/interpolate", response_model=InterpolateResponse, responses=_PNG)
def interpolate_get(
    req: Annotated[InterpolateQuery, Query()],
    settings: SettingsDep,
    store: StoreDep,
    serving: ServingDep,
) -> Response:
    """Interpolate between source points or training codes; frames and singular crossings."""
    return _interpolate(req, settings, store, serving)


@router.post("/interpolate", response_model=InterpolateResponse, responses=_PNG_POST)
def interpolate_post(
    req: InterpolateRequest, settings: SettingsDep, store: StoreDep, serving: ServingDep
) -> Response:
    """Interpolate between source points or training codes (JSON body)."""
    return _interpolate(req, settings, store, serving)


@router.get("/singularities", response_model=SingularitiesResponse, responses=_PNG)
def singularities(
    req: Annotated[SingularitiesQuery, Query()],
    settings: SettingsDep,
    store: StoreDep,
    serving: ServingDep,
) -> Response:
    """Singular set summary: threshold and rule, counts, the most singular pairs; PNG in 2D."""
    served = serving.get(resolve_model(req.model, settings, store))
    headers = _headers(served)
    if req.format == "png":
        return Response(ops.singularities_png(served), media_type="image/png", headers=headers)
    s = ops.singularities(served, req, settings)
    body = SingularitiesResponse(
        model=served.name,
        version=served.version,
        threshold=s.threshold,
        rule=s.rule,
        frame=s.frame,
        gap_ratio=s.gap_ratio,
        reason=s.reason,
        n_pairs=s.n_pairs,
        n_singular=s.n_singular,
        singular_fraction=s.n_singular / s.n_pairs if s.n_pairs else 0.0,
        angle_quantiles=s.quantiles,
        pairs=[
            SingularPairOut(i=int(i), j=int(j), angle=float(a))
            for (i, j), a in zip(s.pairs, s.angles, strict=True)
        ],
        truncated=s.truncated,
    )
    return JSONResponse(body.model_dump(), headers=headers)
