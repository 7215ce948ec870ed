"""2D power cells as labelled polygons, for pictures of the diagram and its singular facets.

:func:`power_cells` clips the square by the half-planes of candidate neighbours (the
adjacency when given), then checks the polygon's vertices against every target: a convex
polygon is cut by a half-plane exactly when one of its vertices violates it, so any neighbour
the candidates missed is found and clipped too. Each edge names the cell across it. Used by
:mod:`solver.plots`; measures, facets and centroids for the fit come from
:func:`solver.cells.power_diagram.power_diagram`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Edge label for the source square's own boundary.
BOUNDARY = -1
# Vertex scores may exceed the cell's own by this much (float64 round-off) without a re-clip.
_TOL = 1e-9


@dataclass(frozen=True, kw_only=True)
class PowerCell:
    """One cell of a 2D power diagram.

    Attributes:
        index: the cell's target index i.
        vertices: polygon vertices in counter-clockwise order, shape ``(V, 2)`` (``V = 0`` for an
            empty cell).
        neighbours: for edge k (vertex k to vertex k + 1), the cell on its other side, or
            :data:`BOUNDARY`; shape ``(V,)``, int64.

    """

    index: int
    vertices: np.ndarray
    neighbours: np.ndarray

    @property
    def area(self) -> float:
        """Shoelace area of the polygon."""
        if len(self.vertices) < 3:
            return 0.0
        x, y = self.vertices[:, 0], self.vertices[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def power_cells(
    targets: np.ndarray,
    heights: np.ndarray,
    *,
    low: float = -0.5,
    high: float = 0.5,
    pairs: np.ndarray | None = None,
) -> list[PowerCell]:
    """All cells of the power diagram of (targets, heights) restricted to ``[low, high]^2``.

    Args:
        targets: y, shape ``(N, 2)``.
        heights: h, shape ``(N,)``.
        low: lower corner coordinate of the square.
        high: upper corner coordinate.
        pairs: known adjacent pairs, shape ``(P, 2)``, used as first candidates (speed only).

    Returns:
        One :class:`PowerCell` per target, in index order.

    Raises:
        ValueError: targets not 2D, shapes disagree, values not finite, or ``low >= high``.

    """
    y = np.asarray(targets, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != 2 or y.shape[0] == 0:
        raise ValueError(f"targets must have shape (N, 2), got {y.shape}")
    if h.shape != (y.shape[0],):
        raise ValueError(f"heights must have shape ({y.shape[0]},), got {h.shape}")
    if not (np.isfinite(y).all() and np.isfinite(h).all()):
        raise ValueError("targets and heights must be finite")
    if not low < high:
        raise ValueError(f"need low < high, got {low} >= {high}")
    candidates: list[list[int]] = [[] for _ in range(len(y))]
    if pairs is not None:
        for i, j in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
            candidates[int(i)].append(int(j))
            candidates[int(j)].append(int(i))
    square = np.array([[low, low], [high, low], [high, high], [low, high]], dtype=np.float64)
    edges = np.full(4, BOUNDARY, dtype=np.int64)
    return [_cell(i, y, h, square, edges, candidates[i]) for i in range(len(y))]


def _cell(
    i: int, y: np.ndarray, h: np.ndarray, square: np.ndarray, edges: np.ndarray, first: list[int]
) -> PowerCell:
    poly, labels = square, edges
    for j in first:
        poly, labels = _clip(poly, labels, y[i] - y[j], h[i] - h[j], j)
    while len(poly):
        scores = poly @ y.T + h  # (V, N)
        excess = scores - scores[:, i : i + 1]
        excess[:, i] = 0.0
        violators = np.flatnonzero((excess > _TOL * (1.0 + np.abs(scores))).any(axis=0))
        if violators.size == 0:
            break
        for j in violators[np.argsort(-excess[:, violators].max(axis=0))]:
            poly, labels = _clip(poly, labels, y[i] - y[j], h[i] - h[j], int(j))
            if not len(poly):
                break
    return PowerCell(index=i, vertices=poly, neighbours=labels)


def _clip(
    poly: np.ndarray, labels: np.ndarray, a: np.ndarray, b: float, j: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the part of ``poly`` where <a, x> + b >= 0; the new edge is labelled ``j``."""
    if not len(poly):
        return poly, labels
    s = poly @ a + b
    verts: list[np.ndarray] = []
    labs: list[int] = []
    n = len(poly)
    for k in range(n):
        p, q, sp, sq = poly[k], poly[(k + 1) % n], s[k], s[(k + 1) % n]
        if sp >= 0:
            verts.append(p)
            labs.append(int(labels[k]))
        if (sp >= 0) != (sq >= 0):
            verts.append(p + (sp / (sp - sq)) * (q - p))
            # Leaving the half-plane: the new vertex starts the cut edge, labelled j.
            # Entering it: the new vertex starts the rest of the old edge k.
            labs.append(j if sp >= 0 else int(labels[k]))
    if len(verts) < 3:
        return np.empty((0, 2)), np.empty(0, dtype=np.int64)
    return np.array(verts), np.array(labs, dtype=np.int64)
