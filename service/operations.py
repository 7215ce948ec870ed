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

from service.errors import InvalidRequest
from service.images import to_png
from service.schemas import InterpolateRequest, SampleRequest, SingularitiesRequest
from service.serving import Served
from service.settings import Settings
from solver import AngleFrame, Interpolation, RuleName
from solver.plots import power_diagram_png


@dataclass(frozen=True, kw_only=True)
class SingularSummary:
    """The singular set of one version, summarised.

    Attributes:
        threshold: dihedral angle threshold in radians, ``None`` when a data-driven rule had
            too few adjacent pairs to choose one (then nothing is singular).
        rule: how the threshold was chosen (``fixed``, ``quantile`` or ``gap``).
        frame: coordinates the angles are measured in (``standard`` or ``raw``).
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


def strip_base64(served: Served, latents: np.ndarray) -> str:
    """Decode frames into a one-row PNG, base64-encoded for JSON."""
    return base64.b64encode(images_png(served, latents, cols=latents.shape[0])).decode()


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


def singularities_png(served: Served) -> bytes:
    """Power diagram picture with singular facets (2D models only)."""
    if served.dim != 2:
        raise InvalidRequest(f"format=png needs a 2D model; {served.name} has d={served.dim}")
    return power_diagram_png(served.ext_map)
