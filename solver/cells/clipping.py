"""Batched clipping of many facets at once: segments in 2D diagrams, polygons in 3D ones.

A facet of a power cell lies in a hyperplane; in that plane's own coordinates z (1D for a
2D diagram, 2D for a 3D one) every other constraint of the cell is a half-space
``alpha + <beta, z> >= 0``. This module intersects, for thousands of facets at once, a large
starting segment or square with each facet's own list of half-spaces, and returns the
measure (length or area) and centroid of what is left, all in numpy without a Python loop
over facets.
"""

from __future__ import annotations

import numpy as np


def segment_bounds(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on t from half-lines ``alpha + beta t >= 0``, elementwise (any shape).

    Returns:
        ``(lower, upper)``: ``t >= lower`` and ``t <= upper`` (``-inf`` / ``inf`` where the
        half-line puts no bound that way; a half-line parallel to the segment that excludes
        it gives ``lower = inf``).

    """
    with np.errstate(divide="ignore", invalid="ignore"):
        root = -alpha / beta
    lower = np.where(beta > 0, root, -np.inf)
    lower = np.where((beta == 0) & (alpha < 0), np.inf, lower)
    upper = np.where(beta < 0, root, np.inf)
    return lower, upper


def clip_segments(
    alpha: np.ndarray, beta: np.ndarray, item: np.ndarray, t0: np.ndarray, t1: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each facet's interval ``[t0, t1]`` by its own half-lines ``alpha + beta t >= 0``.

    Args:
        alpha: constraint offsets, shape ``(C,)``, float64.
        beta: constraint slopes, shape ``(C,)``, float64.
        item: the facet of each constraint, shape ``(C,)``, sorted (facets may have none).
        t0: interval starts, shape ``(F,)``.
        t1: interval ends, shape ``(F,)``.

    Returns:
        ``(t0, t1)``, shapes ``(F,)``: the cut intervals (``t1 <= t0`` when empty).

    """
    if item.size == 0:
        return t0, t1
    lower, upper = segment_bounds(alpha, beta)
    counts = np.bincount(item, minlength=t0.size)
    has = np.flatnonzero(counts)
    starts = (np.cumsum(counts) - counts)[has]  # strictly increasing: reduceat's segments
    t0, t1 = t0.copy(), t1.copy()
    t0[has] = np.maximum(t0[has], np.maximum.reduceat(lower, starts))
    t1[has] = np.minimum(t1[has], np.minimum.reduceat(upper, starts))
    return t0, t1


def clip_polygons(
    alpha: np.ndarray, beta: np.ndarray, counts: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intersect the square ``[-radius, radius]^2`` with each facet's half-planes.

    Sutherland-Hodgman clipping, one half-plane of every facet per round. Facets must be
    sorted by decreasing constraint count, so the facets still clipping in round r are a
    prefix of the arrays.

    Args:
        alpha: offsets, shape ``(F, R)``, float64; row f holds ``counts[f]`` constraints then
            padding.
        beta: normals, shape ``(F, R, 2)``, float64.
        counts: constraints per facet, shape ``(F,)``, non-increasing.
        radius: half-side of the starting square.

    Returns:
        ``(areas, centroids, vertices, counts)``, shapes ``(F,)``, ``(F, 2)`` (``0`` for empty
        facets), ``(F, W, 2)`` (counter-clockwise, padded) and ``(F,)``, in plane coordinates.

    """
    n_facets = alpha.shape[0]
    r_max = int(counts[0]) if n_facets else 0
    verts = np.zeros((n_facets, 4 + r_max, 2))
    square = radius * np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    verts[:, :4] = square
    n_verts = np.full(n_facets, 4, dtype=np.int64)
    for r in range(r_max):
        m = int(np.count_nonzero(counts > r))  # a prefix: counts are sorted
        width = int(n_verts[:m].max(initial=0))
        if width == 0:
            continue
        verts[:m, : width + 1], n_verts[:m] = _clip_round(
            verts[:m, :width], n_verts[:m], alpha[:m, r], beta[:m, r]
        )
    return (*_shoelace(verts, n_verts), verts, n_verts)


def _clip_round(
    poly: np.ndarray, n_verts: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the part of each polygon where ``alpha + <beta, z> >= 0``; one extra column."""
    m, width, _ = poly.shape
    cols = np.arange(width)
    valid = cols < n_verts[:, None]
    s = alpha[:, None] + poly[:, :, 0] * beta[:, None, 0] + poly[:, :, 1] * beta[:, None, 1]
    nxt = np.where(cols + 1 < n_verts[:, None], cols + 1, 0)
    s_next = np.take_along_axis(s, nxt, axis=1)
    inside = (s >= 0) & valid
    cross = ((s >= 0) != (s_next >= 0)) & valid
    n_out = inside.astype(np.int64) + cross
    pos = np.cumsum(n_out, axis=1) - n_out
    out = np.zeros((m, width + 1, 2))
    rows, cs = np.nonzero(inside)
    out[rows, pos[rows, cs]] = poly[rows, cs]
    rows, cs = np.nonzero(cross)
    p, q = poly[rows, cs], poly[rows, nxt[rows, cs]]
    sp, sq = s[rows, cs], s[rows, nxt[rows, cs]]
    out[rows, pos[rows, cs] + inside[rows, cs]] = p + (sp / (sp - sq))[:, None] * (q - p)
    count = n_out.sum(axis=1)
    return out, np.where(count >= 3, count, 0)


def _shoelace(verts: np.ndarray, n_verts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas and centroids of counter-clockwise polygons given with padding."""
    width = verts.shape[1]
    cols = np.arange(width)
    nxt = np.where(cols + 1 < n_verts[:, None], cols + 1, 0)
    q = np.take_along_axis(verts, nxt[:, :, None], axis=1)
    cross = verts[:, :, 0] * q[:, :, 1] - q[:, :, 0] * verts[:, :, 1]
    cross = np.where(cols < n_verts[:, None], cross, 0.0)
    twice = cross.sum(axis=1)
    area = 0.5 * twice
    moment = np.einsum("fw,fwc->fc", cross, verts + q) / 6.0
    with np.errstate(divide="ignore", invalid="ignore"):
        centroid = np.where(area[:, None] > 0, moment / area[:, None], 0.0)
    return np.maximum(area, 0.0), centroid
