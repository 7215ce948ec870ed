"""What the generation endpoints compute, one function each, on one :class:`Served` version.

Every function takes the ``Served`` object a request resolved once, so all of a response comes
from one potential version; every random choice comes from the request's seed.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from service.errors import InvalidRequest
from service.images import crossing_gaps, from_png, singular_set_png, strip_png, to_png
from service.schemas import (
    SCORE_UNITS,
    DecodeRequest,
    ImagesRequest,
    InterpolateRequest,
    SampleRequest,
    SingularitiesRequest,
    SingularitiesResponse,
    SingularPairOut,
)
from service.serving_index import Served
from service.settings import Settings
from solver import Interpolation

# Singular pairs drawn as decoded image pairs in the picture of a model with d > 2.
PICTURE_PAIRS = 12
# What a pair score is in each frame, for the picture's axis, and its unit.
SCORE_LABELS: dict[str, str] = {
    "raw": "dihedral angle of adjacent cells (rad)",
    "standard": "dihedral angle of adjacent cells, standard frame (rad)",
    "valley": "angle x valley ratio of adjacent cells",
    "diffusion": "diffusion distance of adjacent cells",
}


def sample_latents(served: Served, req: SampleRequest, settings: Settings) -> np.ndarray:
    """``req.n`` latents, shape ``(n, d)`` float32, a pure function of (version, seed, offset).

    They are samples ``offset .. offset + n - 1`` of the seed's stream: consecutive pages
    concatenate to one longer answer, bit for bit.
    """
    limit = settings.max_images if req.format == "png" else settings.max_n
    if req.n > limit:
        what = "images (format=png)" if req.format == "png" else "samples"
        raise InvalidRequest(f"n={req.n} exceeds the limit of {limit} {what}")
    # label=c: only the cells of class c (the solver draws from them by rejection).
    cells = None if req.label is None else class_mask(served, req.label)
    try:
        latents = served.ext_map.sample(
            req.n, seed=req.seed, extended=req.extended, start=req.offset, cells=cells
        )
    except ValueError as exc:  # a rare class would need more than the draw limit
        raise InvalidRequest(str(exc)) from None
    return np.ascontiguousarray(latents, dtype=np.float32)


def class_mask(served: Served, label: int) -> np.ndarray:
    """Cells of class ``label`` (majority label of their training codes), shape ``(N,)`` bool.

    Raises:
        InvalidRequest: the bundle has no labels, or no cell has this label.

    """
    if served.cell_labels is None:
        raise InvalidRequest(f"model {served.name!r} has no labels: label= needs a labelled bundle")
    mask = served.cell_labels == label
    if not mask.any():
        raise InvalidRequest(
            f"label={label} owns no cell of model {served.name!r}; classes are {served.classes}"
        )
    return mask


def class_endpoints(served: Served, label: int, seed: int) -> tuple[int, int]:
    """Two distinct cells of class ``label`` with mass centres, chosen by ``seed``.

    Raises:
        InvalidRequest: the class has fewer than two cells with a mass centre.

    """
    cells = np.flatnonzero(class_mask(served, label) & served.ext_map.has_centre)
    if cells.size < 2:
        raise InvalidRequest(f"label={label} has fewer than two cells to interpolate between")
    i, j = np.random.default_rng(seed).choice(cells, size=2, replace=False)
    return int(i), int(j)


def npy_bytes(array: np.ndarray) -> bytes:
    """Encode an array in ``.npy`` format."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def interpolate(served: Served, req: InterpolateRequest, settings: Settings) -> Interpolation:
    """Map a segment of the source cube (or between two training codes) with the map."""
    if req.steps > settings.max_steps:
        raise InvalidRequest(f"steps={req.steps} exceeds the limit of {settings.max_steps}")
    if req.label is not None:
        i, j = class_endpoints(served, req.label, req.seed)
        return served.ext_map.interpolate_indices(i, j, req.steps)
    if req.start is not None and req.end is not None:
        start, end = np.asarray(req.start, np.float32), np.asarray(req.end, np.float32)
        for name, point in (("start", start), ("end", end)):
            if point.shape != (served.dim,):
                raise InvalidRequest(
                    f"{name} must have {served.dim} coordinates, got {point.shape[0]}"
                )
        return served.ext_map.interpolate(start, end, req.steps)
    n_train = served.inverse.shape[0]
    i, j = int(req.start_index or 0), int(req.end_index or 0)
    if i >= n_train or j >= n_train:
        raise InvalidRequest(f"training indices must be < {n_train}, got {i} and {j}")
    return served.ext_map.interpolate_indices(
        int(served.inverse[i]), int(served.inverse[j]), req.steps
    )


def interpolation_png(served: Served, path: Interpolation) -> bytes:
    """Decoded frames in one row, a red bar between the frames where a crossing lies."""
    gaps = crossing_gaps([c.t for c in path.crossings], len(path.t))
    return strip_png(served.bundle.decode(path.latents), gaps)


def strip_base64(served: Served, path: Interpolation) -> str:
    """:func:`interpolation_png`, base64-encoded for JSON."""
    return base64.b64encode(interpolation_png(served, path)).decode()


def singularities(
    served: Served, req: SingularitiesRequest, settings: Settings
) -> SingularitiesResponse:
    """Threshold, counts, score quantiles and the ``req.limit`` most singular pairs.

    With ``images`` (JSON only) each pair carries its two decoded codes as a base64 PNG.
    """
    limit = min(req.limit, settings.max_pairs)
    sing = served.ext_map.singular_set
    angles = sing.angles
    order = np.argsort(-angles[sing.singular], kind="stable")
    pairs = sing.singular_pairs[order][:limit]
    scores = angles[sing.singular][order][:limit]
    pngs = pair_pngs(served, pairs, settings) if req.images and req.format == "json" else None
    qs = {"min": 0.0, "p10": 0.1, "median": 0.5, "p90": 0.9, "max": 1.0}
    return SingularitiesResponse(
        model=served.name,
        version=served.version,
        threshold=_finite_or_none(sing.threshold),
        rule=sing.rule.name,
        frame=sing.frame,
        unit=SCORE_UNITS[sing.frame],
        clusters=sing.clusters,
        gap_ratio=_finite_or_none(sing.gap_ratio),
        reason=sing.reason,
        n_pairs=sing.n_pairs,
        n_singular=sing.n_singular,
        singular_fraction=sing.n_singular / sing.n_pairs if sing.n_pairs else 0.0,
        angle_quantiles={k: float(np.quantile(angles, q)) for k, q in qs.items() if angles.size},
        pairs=[
            SingularPairOut(
                i=int(i), j=int(j), angle=float(a), pair_png=None if pngs is None else pngs[k]
            )
            for k, ((i, j), a) in enumerate(zip(pairs, scores, strict=True))
        ],
        truncated=sing.n_singular > limit,
    )


def _finite_or_none(value: float) -> float | None:
    """JSON has no inf or nan: the solver's "no threshold" / "not applicable" become null."""
    return float(value) if math.isfinite(value) else None


def singularities_png(served: Served, summary: SingularitiesResponse) -> bytes:
    """The singular set as a picture.

    2D: the power diagram with singular facets in red. Higher d: the histogram of adjacent-pair
    scores with the threshold marked, and the most singular pairs as decoded image pairs.
    """
    if served.dim == 2:
        from solver.plots import power_diagram_png  # matplotlib, loaded on first use

        return power_diagram_png(served.ext_map)
    shown = summary.pairs[:PICTURE_PAIRS]
    cells = np.array([[p.i, p.j] for p in shown], dtype=np.int64).reshape(-1)
    decoded = served.bundle.decode(served.ext_map.targets[cells])
    threshold = summary.threshold
    unit = f" {summary.unit}"
    rule = f"threshold {threshold:.3g}{unit}" if threshold is not None else "no threshold"
    title = (
        f"{served.name} v{served.version}: {summary.n_singular} of {summary.n_pairs} adjacent "
        f"pairs singular ({rule}, rule {summary.rule}, {summary.frame} frame)"
    )
    return singular_set_png(
        angles=served.ext_map.singular_set.angles,
        threshold=threshold,
        title=title,
        pair_images=decoded.reshape(len(shown), 2, *decoded.shape[1:]),
        pair_angles=np.array([p.angle for p in shown]),
        score_label=SCORE_LABELS[summary.frame],
        unit=unit,
    )


def pair_pngs(served: Served, pairs: np.ndarray, settings: Settings) -> list[str]:
    """Each pair ``(i, j)`` of cells, shape ``(k, 2)``, as a base64 PNG of its two codes.

    Raises:
        InvalidRequest: more than ``max_images / 2`` pairs.

    """
    if 2 * len(pairs) > settings.max_images:
        raise InvalidRequest(
            f"images=true decodes 2 codes per pair: limit={len(pairs)} exceeds "
            f"{settings.max_images // 2} pairs"
        )
    if not len(pairs):
        return []
    decoded = served.bundle.decode(served.ext_map.targets[pairs.reshape(-1)])
    return [
        base64.b64encode(to_png(decoded[2 * k : 2 * k + 2], cols=2)).decode()
        for k in range(len(pairs))
    ]


def input_images(served: Served, req: ImagesRequest, settings: Settings) -> np.ndarray:
    """The request's images as an array ``(n, C, H, W)`` float32 in [0, 1].

    Raises:
        InvalidRequest: over ``max_images``, wrong shape or size, unreadable PNG.

    """
    shape = served.bundle.config.image_shape
    n = len(req.images) if req.images is not None else len(req.png or [])
    if n > settings.max_images:
        raise InvalidRequest(f"{n} images exceed the limit of {settings.max_images}")
    if req.images is not None:
        try:
            images = np.asarray(req.images, dtype=np.float32)
        except ValueError as exc:  # ragged nesting
            raise InvalidRequest(f"images must be a regular (n, C, H, W) array: {exc}") from exc
        if images.ndim != 4 or images.shape[1:] != shape:
            raise InvalidRequest(
                f"images must have shape (n, {', '.join(map(str, shape))}) for model "
                f"{served.name!r}, got {images.shape}"
            )
        return images
    out = np.empty((n, *shape), dtype=np.float32)
    for k, text in enumerate(req.png or []):
        try:
            out[k] = from_png(base64.b64decode(text, validate=True), shape)
        except ValueError as exc:  # binascii.Error is a ValueError too
            raise InvalidRequest(f"png[{k}]: {exc}") from exc
    return out


def encode(served: Served, images: np.ndarray) -> np.ndarray:
    """Latent codes of images ``(n, C, H, W)``: shape ``(n, d)`` float32."""
    return np.ascontiguousarray(served.bundle.encode(images), dtype=np.float32)


def decode(served: Served, req: DecodeRequest, settings: Settings) -> np.ndarray:
    """Images ``(n, C, H, W)`` in [0, 1] of the request's latents.

    Raises:
        InvalidRequest: over ``max_images``, or rows that are not d long.

    """
    n = len(req.latents)
    if n > settings.max_images:
        raise InvalidRequest(f"{n} latents exceed the limit of {settings.max_images}")
    bad = next((k for k, row in enumerate(req.latents) if len(row) != served.dim), None)
    if bad is not None:
        raise InvalidRequest(
            f"latents[{bad}] has {len(req.latents[bad])} coordinates; model {served.name!r} "
            f"has d={served.dim}"
        )
    return served.bundle.decode(np.asarray(req.latents, dtype=np.float32))


def comparison_png(originals: np.ndarray, reconstructions: np.ndarray) -> bytes:
    """Originals (top row) above their reconstructions (bottom row)."""
    n = originals.shape[0]
    return to_png(np.concatenate([originals, reconstructions]), cols=n)
