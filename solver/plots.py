"""2D pictures as PNG bytes: the power diagram with its singular facets, real vs generated samples.

Like the paper's Figs. 8-10 (power diagram, singular facets in a contrasting colour) and 13c
(real samples and generated ones). Matplotlib runs headless (the Agg canvas, no pyplot state),
so these are safe to call from server threads.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from solver.cells.power_diagram import BOUNDARY, PowerCell, power_cells
from solver.potential.extended_map import ExtendedMap
from solver.potential.singular import frame_angles

REGULAR_COLOUR = "#9aa5b1"
SINGULAR_COLOUR = "#d62728"
CENTRE_COLOUR = "#1f77b4"
REAL_COLOUR = "#7f7f7f"
GENERATED_COLOUR = "#d62728"


def power_diagram_png(
    ext_map: ExtendedMap, *, size_px: int = 640, show_centres: bool = True, title: str | None = None
) -> bytes:
    """The power diagram on the source square, singular facets drawn in red.

    Facets of adjacent pairs the Monte Carlo pass did not observe (too thin to be sampled) are
    drawn as regular unless their angle is above the threshold.

    Args:
        ext_map: a 2D extended map.
        size_px: width and height of the picture in pixels (64 to 4096).
        show_centres: mark the cells' Monte Carlo mass centres.
        title: picture title; a summary of the singular set when ``None``.

    Returns:
        PNG bytes.

    Raises:
        ValueError: the map is not 2D or ``size_px`` is out of range.

    """
    if ext_map.dim != 2:
        raise ValueError(f"the power diagram is drawn for 2D maps only, this one is {ext_map.dim}D")
    _check_size(size_px)
    sset = ext_map.singular_set
    cells = power_cells(
        ext_map.targets,
        ext_map.heights,
        low=ext_map.source.low,
        high=ext_map.source.high,
        pairs=ext_map.adjacency.pairs,
    )
    facets, pairs = _facets(cells)
    singular = _singular_flags(ext_map, pairs)
    fig, ax = _figure(size_px)
    ax.add_collection(LineCollection(facets[~singular], colors=REGULAR_COLOUR, linewidths=0.6))
    ax.add_collection(LineCollection(facets[singular], colors=SINGULAR_COLOUR, linewidths=1.4))
    if show_centres:
        c = ext_map.mass_centres[ext_map.has_centre]
        ax.scatter(c[:, 0], c[:, 1], s=2, c=CENTRE_COLOUR, linewidths=0)
    lo, hi = ext_map.source.low, ext_map.source.high
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_title(
        title
        if title is not None
        else f"{ext_map.n_targets} cells, {int(singular.sum())} singular facets "
        f"(threshold {sset.threshold:.3g} rad, rule {sset.rule.name})",
        fontsize=9,
    )
    return _png(fig)


def samples_png(
    real: np.ndarray,
    generated: np.ndarray,
    *,
    size_px: int = 640,
    title: str = "real (grey) and generated (red) samples",
) -> bytes:
    """Scatter plot of real and generated 2D points (like the paper's Fig. 13c).

    Args:
        real: shape ``(R, 2)``.
        generated: shape ``(G, 2)``.
        size_px: width and height of the picture in pixels (64 to 4096).
        title: picture title.

    Returns:
        PNG bytes.

    """
    _check_size(size_px)
    pts = []
    for name, a in (("real", real), ("generated", generated)):
        arr = np.asarray(a, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
            raise ValueError(f"{name} must be finite points of shape (M, 2), got {arr.shape}")
        pts.append(arr)
    fig, ax = _figure(size_px)
    ax.scatter(pts[0][:, 0], pts[0][:, 1], s=6, c=REAL_COLOUR, linewidths=0, label="real")
    ax.scatter(pts[1][:, 0], pts[1][:, 1], s=2, c=GENERATED_COLOUR, linewidths=0, label="generated")
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def _facets(cells: list[PowerCell]) -> tuple[np.ndarray, np.ndarray]:
    """Interior edges (each once, from the lower-index cell) and their pairs."""
    segs, pairs = [], []
    for cell in cells:
        v, nb = cell.vertices, cell.neighbours
        for k in range(len(v)):
            j = int(nb[k])
            if j == BOUNDARY or j < cell.index:
                continue
            segs.append((v[k], v[(k + 1) % len(v)]))
            pairs.append((cell.index, j))
    return (
        np.array(segs, dtype=np.float64).reshape(-1, 2, 2),
        np.array(pairs, dtype=np.int64).reshape(-1, 2),
    )


def _singular_flags(ext_map: ExtendedMap, pairs: np.ndarray) -> np.ndarray:
    """Singular flag of each drawn facet.

    The map's classification where the Monte Carlo pass saw the pair, else the angle rule.
    """
    if not len(pairs):
        return np.zeros(0, dtype=bool)
    sset = ext_map.singular_set
    seen = sset.lookup(pairs[:, 0], pairs[:, 1]) >= 0
    flags = sset.is_singular(pairs[:, 0], pairs[:, 1])
    if (~seen).any():
        angles = frame_angles(ext_map.targets, pairs[~seen], sset.frame)
        flags[~seen] = angles > sset.threshold
    return flags


def _figure(size_px: int) -> tuple[Figure, Axes]:
    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.05, 0.9, 0.88))
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _check_size(size_px: int) -> None:
    if not 64 <= int(size_px) <= 4096:
        raise ValueError(f"size_px must be in [64, 4096], got {size_px}")
