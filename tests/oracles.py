"""Exact answers for small 2D problems: Laguerre cell areas by half-plane clipping."""

from __future__ import annotations

import numpy as np


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
