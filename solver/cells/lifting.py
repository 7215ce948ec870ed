"""Candidate neighbours of power cells from the lower convex hull of the lifted targets.

The potential u_h(x) = max_i <x, y_i> + h_i is the Legendre dual of the lower convex envelope
of the points (y_i, -h_i): cell i is non-empty exactly when the lifted point is a vertex of
the lower hull, and cells i and j can share a facet only when the lifted points are joined by
an edge of it (the regular triangulation of the targets). Qhull (scipy.spatial.ConvexHull)
gives that hull; its edges are a small superset of the adjacent pairs inside the source cube,
so clipping each cell by its candidates only is exact.

Degenerate input is reduced first: targets on a line (2D) or a plane (3D) have lifted points
in a vertical hyperplane, which Qhull rejects as flat, so the hull is taken in the targets'
own affine coordinates (the cells are then slabs or prisms over the lower-dimensional diagram).
Points Qhull finds within its precision of a facet (near-duplicate targets) are kept as
candidates of the facet's vertices, so a thin cell is never dropped for round-off.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

# Lower hull facets have outward normals pointing down (last component below -this). Vertical
# facets (collinear targets on the boundary of their hull, e.g. grids) are left out: their
# upper vertices are not lower-hull vertices, and taking them in would give such a point a
# cell clipped only by the vertical facet's other vertices.
_VERTICAL_TOL = 1e-13
# Singular values below this fraction of the largest mark an exactly flat target set
# (co-linear in 2D, co-planar in 3D); anything thicker is left to Qhull, which handles it.
_FLAT_TOL = 1e-9


def candidate_pairs(targets: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, that may share a facet of the power diagram of (targets, heights).

    Args:
        targets: y, shape ``(N, d)``, float64, distinct rows.
        heights: h, shape ``(N,)``, float64.

    Returns:
        Shape ``(P, 2)``, int64, unique rows with i < j; every pair of cells adjacent anywhere
        in R^d is among them.

    """
    n, d = targets.shape
    if n <= d + 2:
        return _all_pairs(n)
    lifted = np.hstack([targets, -heights[:, None]])
    try:
        hull = ConvexHull(_condition(lifted), qhull_options="Qc")
    except QhullError:
        coords = _affine_coordinates(targets)
        if coords.shape[1] == 0 or n <= coords.shape[1] + 2:
            return _all_pairs(n)
        lifted = np.hstack([coords, -heights[:, None]])
        try:
            hull = ConvexHull(_condition(lifted), qhull_options="Qc")
        except QhullError:
            return _flat_pairs(coords)
    return _hull_pairs(hull)


def _condition(lifted: np.ndarray) -> np.ndarray:
    """Centre every column and scale the heights column to the targets' spread.

    The lower hull is unchanged by translations and by a positive scaling of the last
    coordinate; Qhull's precision is relative to the coordinates' range.
    """
    out = lifted - lifted.mean(axis=0)
    spread_y = float(np.abs(out[:, :-1]).max())
    spread_h = float(np.abs(out[:, -1]).max())
    if spread_h > 0 and spread_y > 0:
        out[:, -1] *= spread_y / spread_h
    return out


def _affine_coordinates(targets: np.ndarray) -> np.ndarray:
    """Coordinates of the targets in their own affine hull, shape ``(N, k)``."""
    centred = targets - targets.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.count_nonzero(sing > _FLAT_TOL * sing[0])) if sing[0] > 0 else 0
    return centred @ vt[:rank].T


def _hull_pairs(hull: ConvexHull) -> np.ndarray:
    """Edges of the lower facets, plus candidates of points Qhull called coplanar."""
    k = hull.points.shape[1]
    is_lower = hull.equations[:, k - 1] < -_VERTICAL_TOL
    lower = hull.simplices[is_lower]
    a, b = np.triu_indices(k, 1)
    edges = np.stack([lower[:, a].reshape(-1), lower[:, b].reshape(-1)], axis=1)
    if hull.coplanar.size:
        edges = np.vstack([edges, _coplanar_pairs(hull, is_lower, edges)])
    n_points = hull.points.shape[0]
    lo = np.minimum(edges[:, 0], edges[:, 1]).astype(np.int64)
    hi = np.maximum(edges[:, 0], edges[:, 1]).astype(np.int64)
    codes = np.unique(lo[lo != hi] * n_points + hi[lo != hi])
    return np.stack([codes // n_points, codes % n_points], axis=1)


def _coplanar_pairs(hull: ConvexHull, is_lower: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Pair each coplanar point with its facet's vertices, its nearest vertex and its neighbours.

    Only points near lower facets count. A near-duplicate of a target lies within Qhull's
    precision of the hull and is not made a vertex; its cell is thin but not empty, and its
    neighbours are among those of its twin.
    """
    out: list[tuple[int, int]] = []
    for point, facet, nearest in hull.coplanar:
        if not is_lower[facet]:
            continue  # near a vertical or upper facet: not a lower-hull point
        near = {int(nearest)}
        near.update(int(v) for v in hull.simplices[facet])
        twins = edges[(edges[:, 0] == nearest) | (edges[:, 1] == nearest)].reshape(-1)
        near.update(int(v) for v in twins)
        out.extend((int(point), v) for v in near)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _flat_pairs(coords: np.ndarray) -> np.ndarray:
    """Candidates when the lifted points are flat too (heights affine in the targets).

    Then u_h(x) = max_i <x + c, y_i> + b: only vertices of the targets' convex hull have
    cells (the normal cones of the hull), so every pair of hull vertices is a candidate.
    """
    if coords.shape[1] == 1:
        ends = np.array([np.argmin(coords[:, 0]), np.argmax(coords[:, 0])])
    else:
        ends = ConvexHull(coords).vertices
    i, j = np.triu_indices(ends.size, 1)
    return np.sort(np.stack([ends[i], ends[j]], axis=1), axis=1).astype(np.int64)


def _all_pairs(n: int) -> np.ndarray:
    i, j = np.triu_indices(n, 1)
    return np.stack([i, j], axis=1).astype(np.int64)
