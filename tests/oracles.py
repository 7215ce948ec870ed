"""Exact answers for the tests: float64 brute-force top-k searches, and Laguerre cell areas of
small 2D problems by half-plane clipping."""

from __future__ import annotations

import numpy as np


def brute_force(
    x: np.ndarray, y: np.ndarray, h: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 top-k scores <x, y_i> + h_i and cells of queries x, best first (k <= N used).

    Exact; equal scores may come in any order (tests compare cells on :func:`separated`
    queries only).
    """
    scores = x.astype(np.float64) @ y.astype(np.float64).T + h
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), 1), 1)
    return np.take_along_axis(scores, order, axis=1), order


def ranked(x: np.ndarray, y: np.ndarray, h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 top-k by the tie rule: score descending, then cell index ascending.

    For problems whose float32 scores are exact (dyadic values, :func:`dyadic_ties`), every
    backend must return exactly these cells.
    """
    scores = x.astype(np.float64) @ y.astype(np.float64).T + h
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def dyadic_ties(
    rng: np.random.Generator, n: int, d: int, m: int, *, duplicates: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A problem full of exactly equal scores that every backend computes exactly.

    Coordinates are multiples of 1/4 (targets) and 1/16 (queries, in the centred cube) with
    3-4 significant bits, heights multiples of 1/64: products and sums are exact in bfloat16
    products with float32 sums and in any float32 summation order, so equal scores are equal
    on every backend. With ``duplicates``, the targets are a quarter as many distinct rows,
    each repeated at scattered positions with the same height (exact duplicate cells).

    Returns:
        ``(x, y, h)``: float32 queries ``(m, d)``, targets ``(n, d)``, heights ``(n,)``.
    """
    y = rng.integers(-4, 5, size=(n, d)) / 4.0
    h = rng.integers(-32, 33, size=n) / 64.0
    if duplicates:
        base = rng.integers(0, n // 4, size=n)
        y, h = y[base], h[base]
    x = rng.integers(-8, 9, size=(m, d)) / 16.0
    return x.astype(np.float32), y.astype(np.float32), h.astype(np.float32)


def separated(top: np.ndarray, k: int) -> np.ndarray:
    """Queries whose k + 1 best scores (rows of ``top``, best first) are more than float32
    rounding apart, so any exact search must return the same k cells in the same order."""
    return np.all(np.diff(-top[:, : k + 1], axis=1) > 1e-4, axis=1)


def unambiguous(x: np.ndarray, y: np.ndarray, h: np.ndarray, k: int) -> np.ndarray:
    """:func:`separated` queries of a brute-force search."""
    return separated(brute_force(x, y, h, k + 1)[0], k)


def clip(poly: np.ndarray, a: np.ndarray, b: float) -> np.ndarray:
    """Keep the part of convex polygon ``poly`` (shape (k, 2)) where <a, x> + b >= 0."""
    if len(poly) == 0:
        return poly
    s = poly @ a + b
    out = []
    for k in range(len(poly)):
        p, q, sp, sq = poly[k], poly[(k + 1) % len(poly)], s[k], s[(k + 1) % len(poly)]
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            t = sp / (sp - sq)
            out.append(p + t * (q - p))
    return np.array(out).reshape(-1, 2)


def area(poly: np.ndarray) -> float:
    """Shoelace area of a polygon given by its vertices in order."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def laguerre_areas(y: np.ndarray, h: np.ndarray, low: float = -0.5) -> np.ndarray:
    """Exact areas of cells {x in box : <x, y_i> + h_i >= <x, y_j> + h_j for all j}."""
    y = np.asarray(y, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    box = np.array([[low, low], [low + 1, low], [low + 1, low + 1], [low, low + 1]])
    areas = np.zeros(len(y))
    for i in range(len(y)):
        poly = box
        for j in range(len(y)):
            if j != i:
                poly = clip(poly, y[i] - y[j], h[i] - h[j])
                if len(poly) == 0:
                    break
        areas[i] = area(poly)
    return areas


def halfspace_cells(
    y: np.ndarray, h: np.ndarray, low: float = -0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Volumes and centroids of cells in any dimension, each from ALL N - 1 constraints.

    Every cell is scipy's HalfspaceIntersection of the cube and the half-spaces
    <x, y_i - y_j> + h_i - h_j >= 0 for every j != i, around its Chebyshev centre (a linear
    program); volume and centroid by a Delaunay split of the polytope into simplices.
    """
    from math import factorial

    from scipy.optimize import linprog
    from scipy.spatial import Delaunay, HalfspaceIntersection

    y = np.asarray(y, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    n, d = y.shape
    volumes, centroids = np.zeros(n), np.full((n, d), np.nan)
    for i in range(n):
        # Rows A x + b <= 0.
        a = np.vstack([np.delete(y, i, 0) - y[i], np.eye(d), -np.eye(d)])
        b = np.concatenate([np.delete(h, i) - h[i], np.full(d, -(low + 1.0)), np.full(d, low)])
        norm = np.linalg.norm(a, axis=1)
        lp = linprog(
            np.r_[np.zeros(d), -1.0],
            A_ub=np.c_[a, norm],
            b_ub=-b,
            bounds=[(None, None)] * d + [(0, None)],
        )
        if lp.status != 0 or lp.x[-1] < 1e-9:
            continue  # no interior: an empty cell
        corners = HalfspaceIntersection(np.c_[a, b], lp.x[:d]).intersections
        simplices = corners[Delaunay(corners).simplices]  # (S, d + 1, d)
        edges = simplices[:, 1:] - simplices[:, :1]
        vol = np.abs(np.linalg.det(edges)) / factorial(d)
        volumes[i] = vol.sum()
        centroids[i] = (vol[:, None] * simplices.mean(axis=1)).sum(axis=0) / vol.sum()
    return volumes, centroids
