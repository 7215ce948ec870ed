"""What the generation endpoints compute, one function each, on one :class:`Served` version.

Every function takes the ``Served`` object a request resolved once, so all of a response comes
from one potential version; every random choice comes from the request's seed.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np

from service.conditional import class_endpoints, sample_class
from service.errors import InvalidRequest
from service.images import crossing_gaps, from_png, singular_set_png, strip_png, to_png
from service.schemas import (
    DecodeRequest,
    ImagesRequest,
    InterpolateRequest,
    SampleRequest,
    SingularitiesRequest,
)
from service.serving import Served
from service.settings import Settings
from solver import AngleFrame, Interpolation, RuleName

# Singular pairs drawn as decoded image pairs in the picture of a model with d > 2.
PICTURE_PAIRS = 12
# What a pair score is in each frame, for the picture's axis, and its unit.
SCORE_LABELS: dict[str, str] = {
    "raw": "dihedral angle of adjacent cells (rad)",
    "standard": "dihedral angle of adjacent cells, standard frame (rad)",
    "valley": "angle x valley ratio of adjacent cells",
    "diffusion": "diffusion distance of adjacent cells",
}
SCORE_UNITS: dict[str, str] = {"raw": " rad", "standard": " rad", "valley": "", "diffusion": ""}


@dataclass(frozen=True, kw_only=True)
class SingularSummary:
    """The singular set of one version, summarised.

    Attributes:
        threshold: score threshold in the frame's units, ``None`` when a data-driven rule had
            too few adjacent pairs to choose one or found no cluster boundary (then nothing
            is singular).
        rule: how the threshold was chosen (``fixed``, ``quantile``, ``gap`` or
            ``clusters``).
        frame: how pairs are scored (``standard``, ``raw``, ``valley`` or ``diffusion``).
        clusters: spectral clusters of the latents, the random walk's slow modes (diffusion
            frame, cluster rule), else 0.
        gap_ratio: for the gap rule and the default choice, how clearly the largest angles
            stand apart; else ``None``.
        reason: how the rule was chosen, in words.
        n_pairs: adjacent pairs observed; n_singular: those above the threshold.
        quantiles: angle quantiles of the adjacent pairs (radians) by name.
        pairs: singular pairs ``(i, j)`` largest angle first, shape ``(k, 2)``; angles ``(k,)``.
        truncated: more singular pairs exist than listed.

    """

    threshold: float | None
    rule: RuleName
    frame: AngleFrame
    clusters: int
    gap_ratio: float | None
    reason: str
    n_pairs: int
    n_singular: int
    quantiles: dict[str, float]
    pairs: np.ndarray
    angles: np.ndarray
    truncated: bool


def sample_latents(served: Served, req: SampleRequest, settings: Settings) -> np.ndarray:
    """``req.n`` latents, shape ``(n, d)`` float32, a pure function of (version, seed)."""
    limit = settings.max_images if req.format == "png" else settings.max_n
    if req.n > limit:
        what = "images (format=png)" if req.format == "png" else "samples"
        raise InvalidRequest(f"n={req.n} exceeds the limit of {limit} {what}")
    if req.label is not None:
        latents = sample_class(served, req.label, req.n, req.seed, req.extended)
    else:
        latents = served.ext_map.sample(req.n, seed=req.seed, extended=req.extended)
    return np.ascontiguousarray(latents, dtype=np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    """Encode an array in ``.npy`` format."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def images_png(served: Served, latents: np.ndarray, cols: int | None = None) -> bytes:
    """Decode latents and tile them into a PNG (a grid, or a strip with ``cols = n``)."""
    return to_png(served.bundle.decode(latents), cols)


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


def singularities(served: Served, req: SingularitiesRequest, settings: Settings) -> SingularSummary:
    """Threshold, counts, angle quantiles and the ``req.limit`` most singular pairs."""
    limit = min(req.limit, settings.max_pairs)
    sing = served.ext_map.singular_set
    angles = sing.angles
    singular = sing.singular_pairs
    order = np.argsort(-angles[sing.singular], kind="stable")
    qs = {"min": 0.0, "p10": 0.1, "median": 0.5, "p90": 0.9, "max": 1.0}
    quantiles = {k: float(np.quantile(angles, q)) for k, q in qs.items()} if angles.size else {}
    return SingularSummary(
        threshold=_finite_or_none(sing.threshold),
        rule=sing.rule.name,
        frame=sing.frame,
        clusters=sing.clusters,
        gap_ratio=_finite_or_none(sing.gap_ratio),
        reason=sing.reason,
        n_pairs=sing.n_pairs,
        n_singular=sing.n_singular,
        quantiles=quantiles,
        pairs=singular[order][:limit],
        angles=angles[sing.singular][order][:limit],
        truncated=sing.n_singular > limit,
    )


def _finite_or_none(value: float) -> float | None:
    """JSON has no inf or nan: the solver's "no threshold" / "not applicable" become null."""
    return float(value) if math.isfinite(value) else None


def singularities_png(served: Served, summary: SingularSummary) -> bytes:
    """The singular set as a picture.

    2D: the power diagram with singular facets in red. Higher d: the histogram of adjacent-pair
    angles with the threshold marked, and the most singular pairs as decoded image pairs.
    """
    if served.dim == 2:
        from solver.plots import power_diagram_png  # matplotlib, loaded on first use

        return power_diagram_png(served.ext_map)
    k = min(PICTURE_PAIRS, summary.pairs.shape[0])
    targets = served.ext_map.targets[summary.pairs[:k].reshape(-1)]
    decoded = served.bundle.decode(targets)
    threshold = summary.threshold
    unit = SCORE_UNITS[summary.frame]
    rule = f"threshold {threshold:.3g}{unit}" if threshold is not None else "no threshold"
    title = (
        f"{served.name} v{served.version}: {summary.n_singular} of {summary.n_pairs} adjacent "
        f"pairs singular ({rule}, rule {summary.rule}, {summary.frame} frame)"
    )
    return singular_set_png(
        angles=served.ext_map.singular_set.angles,
        threshold=threshold,
        title=title,
        pair_images=decoded.reshape(k, 2, *decoded.shape[1:]),
        pair_angles=summary.angles[:k],
        score_label=SCORE_LABELS[summary.frame],
        unit=unit,
    )


def pair_pngs(served: Served, pairs: np.ndarray, settings: Settings) -> list[str]:
    """Each pair ``(i, j)`` of cells as a base64 PNG of their two decoded codes.

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


def grid_png(images: np.ndarray) -> bytes:
    """Images ``(n, C, H, W)`` as one near-square PNG grid."""
    return to_png(images)


def comparison_png(originals: np.ndarray, reconstructions: np.ndarray) -> bytes:
    """Originals (top row) above their reconstructions (bottom row)."""
    n = originals.shape[0]
    return to_png(np.concatenate([originals, reconstructions]), cols=n)
