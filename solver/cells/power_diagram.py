"""Exact power diagrams in 1D, 2D and 3D: cell measures, facet measures and mass centres.

The cell of y_i in the source cube is W_i = {x : <x, y_i> + h_i >= <x, y_j> + h_j for all j},
an intersection of half-spaces with the cube. :func:`power_diagram` computes, exactly up to
floating point, every cell's measure and mass centre and every facet's (d-1)-measure:

1. candidate neighbours come from the lower convex hull of the lifted points (y_i, -h_i)
   (:mod:`solver.cells.lifting`); a target that is not a hull vertex has an empty cell;
2. each facet W_i cap W_j is the plane <x, y_i - y_j> + h_i - h_j = 0 cut by the cube and by
   the other candidates of cell i; the cube's faces cut by cell i's candidates are its
   boundary facets; all facets are clipped together (:mod:`solver.cells.clipping`);
3. the divergence theorem turns facets into volumes: with x0 the cube's centre and n_F the
   outward unit normal, |W_i| = sum_F |F| <n_F, p_F - x0> / d (p_F any point of F's plane),
   and the cell's mass centre is the volume-weighted mean of the pyramids (x0, F), whose
   centroids are x0 + d / (d + 1) (c_F - x0).

That is the numpy path, batched over all facets. In 2D and 3D the compiled kernel
(``solver/cells/_laguerre.c``, built at install when a C compiler is present) takes the same
candidates and clips each cell, starting from the cube, by its candidates' half-spaces, then
measures the polytope (a cell per call of a loop in C, on a few threads). Both compute every
cell exactly; the numpy path is the fallback and the reference in the tests.

Any candidate list that contains each cell's true neighbours gives the exact diagram, and a
smaller one can only give cells too large (each clipped by fewer half-spaces): when every cell
has candidates, the cells' volumes sum to 1 exactly when no neighbour is missing. So an earlier
diagram's adjacency (a Newton step moves the heights a little) is tried first when the caller
passes it, and the lifted hull is taken only when the volumes do not sum to 1 within round-off.

:func:`solver.cells.polygons.power_cells` gives the 2D cells as labelled polygons for
:mod:`solver.plots`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from solver.cells.clipping import clip_polygons, clip_segments, segment_bounds
from solver.cells.lifting import candidate_pairs

try:
    from solver.cells import _laguerre
except ImportError:  # built without a C compiler: the numpy path computes every diagram
    _laguerre = None  # type: ignore[assignment]

# Facets below this fraction of the smaller cell's (d-1)-size are round-off of a candidate
# pair that only touches at a vertex or an edge, not real adjacency.
_MIN_FACET = 1e-9
# Facet corners this close to a face of the cube (fraction of its side) touch it.
_BOUNDARY_TOL = 1e-9
# Heights (or unit normals) equal to this relative round-off are ties.
_TIE_TOL = 1e-12
# The cells must fill the cube to this accuracy, or a candidate neighbour was missed.
_MASS_TOL = 1e-9
# Reused candidates (an earlier diagram's adjacency) are trusted only when the cells fill the
# cube to this: a missed neighbour makes a cell too large by the piece it should have lost, so
# no cell measure is off by more (float64 sums of the cells are ~1e-15 off).
_REUSE_TOL = 1e-12
# Passes over reused candidates (each doubles the reach of the candidates) before the hull.
_REUSE_PASSES = 3
# Below this many cells the compiled kernel runs on one thread (a thread's start costs more).
_THREAD_MIN_CELLS = 4096
# From this many cells on the kernel sees the cells in Morton order (memory locality).
_LOCALITY_MIN_CELLS = 20000


@dataclass(frozen=True, kw_only=True)
class PowerDiagram:
    """The exact power diagram of (targets, heights) in the cube ``[low, high]^d``, d <= 3.

    Attributes:
        cell_measures: |W_i|, shape ``(N,)``, float64 (the cube has volume 1, so these are
            source-measure masses summing to 1).
        centroids: mass centres of the cells, shape ``(N, d)``, float64, ``nan`` rows for
            empty cells.
        pairs: adjacent cells (i < j) sharing a facet of positive measure, shape ``(P, 2)``,
            int64.
        facet_measures: |W_i cap W_j|, the facets' lengths (2D) or areas (3D), 1 in 1D,
            shape ``(P,)``.
        low: lower corner coordinate of the cube.
        high: upper corner coordinate.
        candidates: the candidate pairs the compiled path clipped with (a superset of
            ``pairs`` that also holds cells adjacent only outside the cube), ``(C, 2)``; None
            from the numpy path. A later diagram at nearby heights tries them first.

    """

    cell_measures: np.ndarray
    centroids: np.ndarray
    pairs: np.ndarray
    facet_measures: np.ndarray
    low: float
    high: float
    candidates: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def empty_cells(self) -> int:
        """Number of cells of measure zero."""
        return int(np.count_nonzero(self.cell_measures <= 0))


def power_diagram(
    targets: np.ndarray,
    heights: np.ndarray,
    *,
    low: float = -0.5,
    high: float = 0.5,
    near: PowerDiagram | None = None,
    compiled: bool | None = None,
) -> PowerDiagram:
    """Exact cell measures, mass centres and facets of the power diagram in ``[low, high]^d``.

    Args:
        targets: y, shape ``(N, d)`` with d = 1, 2 or 3. Of identical rows only the one with the
            largest height (the first on ties) gets a non-empty cell.
        heights: h, shape ``(N,)``.
        low: lower corner coordinate of the cube.
        high: upper corner coordinate; the cube must have volume 1 (``high - low = 1``).
        near: the diagram of the same targets at nearby heights (speed only, compiled path):
            its adjacency is tried as the candidates and its centroids order each cell's clips.
            The result is the same diagram to round-off.
        compiled: ``True`` for the compiled kernel (d = 2, 3; raises when it is not built),
            ``False`` for the numpy path; ``None`` (default) the compiled kernel when built.

    Returns:
        The :class:`PowerDiagram`.

    Raises:
        ValueError: d not 1, 2 or 3, shapes disagree, values not finite, or a cube of volume != 1.
        RuntimeError: the cells do not fill the cube (a candidate neighbour was lost to
            round-off; never returned silently), or ``compiled=True`` without the kernel.

    """
    y, h = _check_input(targets, heights, low, high)
    d = y.shape[1]
    use_kernel = (_laguerre is not None and d > 1) if compiled is None else compiled
    if use_kernel and (_laguerre is None or d == 1):
        raise RuntimeError("the compiled power-cell kernel is not built (or d = 1)")
    candidates = None
    if use_kernel:
        (cells, centroids, pairs, facets), candidates = _compiled_diagram(y, h, low, high, near)
    else:
        cells, centroids, pairs, facets = _diagram(y, h, low, high)
    total = float(cells.sum())
    if abs(total - 1.0) > _MASS_TOL:
        raise RuntimeError(f"power diagram cells fill {total!r} of the cube, expected 1")
    # Round-off facets (cells touching at a vertex or an edge) are ~1e-16 of the cube; real
    # ones scale with the smaller cell, however small: compare with its (d-1)-size.
    smaller = np.minimum(cells[pairs[:, 0]], cells[pairs[:, 1]]) if pairs.size else np.zeros(0)
    keep = facets > _MIN_FACET * smaller ** ((d - 1) / d)
    return PowerDiagram(
        cell_measures=cells,
        centroids=centroids,
        pairs=pairs[keep],
        facet_measures=facets[keep],
        low=float(low),
        high=float(high),
        candidates=candidates,
    )


def _check_input(
    targets: np.ndarray, heights: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(targets, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] not in (1, 2, 3) or y.shape[0] == 0:
        raise ValueError(f"targets must have shape (N, d) with d = 1, 2 or 3, got {y.shape}")
    if h.shape != (y.shape[0],):
        raise ValueError(f"heights must have shape ({y.shape[0]},), got {h.shape}")
    if not (np.isfinite(y).all() and np.isfinite(h).all()):
        raise ValueError("targets and heights must be finite")
    if abs((high - low) - 1.0) > 1e-12:
        raise ValueError(f"the cube must have side 1, got [{low}, {high}]")
    return y, h


_Diagram = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def kernel_available() -> bool:
    """Whether the compiled power-cell kernel (``solver/cells/_laguerre.c``) is built."""
    return _laguerre is not None


def _compiled_diagram(
    y: np.ndarray, h: np.ndarray, low: float, high: float, near: PowerDiagram | None
) -> tuple[_Diagram, np.ndarray]:
    """Cell measures, centroids, pairs and facet measures from the compiled kernel.

    The candidates of ``near`` are tried first when every cell has one (then a missed
    neighbour shows in the total volume); otherwise, or when the total is off, the candidates
    come from the lifted hull. Also returns the candidates used.
    """
    n = y.shape[0]
    seeds = np.clip(y, low, high)
    if near is not None and near.cell_measures.shape == (n,):
        seen = np.isfinite(near.centroids).all(axis=1)
        seeds[seen] = near.centroids[seen]
        reuse = near.candidates
        # In 3D, Qhull on the lifted points costs less than a pass that fails (measured at
        # N = 2,000 and 10,000), and small steps there change the adjacency beyond two rings.
        if (
            y.shape[1] == 2
            and n > 1
            and reuse is not None
            and np.bincount(reuse.ravel(), minlength=n).all()
        ):
            # Each pass clips with two rings of the candidates and adds the facets it found:
            # a neighbour k rings away is within two rings after about log2(k) passes.
            for _ in range(_REUSE_PASSES):
                out = _kernel(y, h, low, high, reuse, seeds, rings=2)
                if out is None:
                    break
                grown = _union_pairs(reuse, out[2], n)
                if abs(float(out[0].sum()) - 1.0) <= _REUSE_TOL:
                    # Keep the candidates (cells adjacent just outside the cube may come in).
                    return out, grown
                if len(grown) == len(reuse):
                    break
                reuse = grown
    pairs = candidate_pairs(y, h)
    out = _kernel(y, h, low, high, pairs, seeds)
    if out is None:
        # Identical targets: keep the highest of each (as the numpy path does), then recompute.
        keep = _highest_of_duplicates(y, h, None)
        (cells, cen, sub_pairs, facets), sub_candidates = _compiled_diagram(
            y[keep], h[keep], low, high, None
        )
        out_cells, out_cen = np.zeros(n), np.full(y.shape, np.nan)
        out_cells[keep], out_cen[keep] = cells, cen
        return (out_cells, out_cen, keep[sub_pairs], facets), keep[sub_candidates]
    return out, pairs


def _union_pairs(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Pairs (i < j) in ``a`` or ``b``, each once, in (i, j) order; ``a`` is in that order."""
    codes_a = a[:, 0] * n + a[:, 1]
    # The kernel reports each facet once, by owner: nearly sorted already.
    codes_b = np.sort(b[:, 0] * n + b[:, 1], kind="stable")
    at = np.minimum(np.searchsorted(codes_a, codes_b), max(codes_a.size - 1, 0))
    new = codes_b[codes_a[at] != codes_b] if codes_a.size else codes_b
    if new.size == 0:
        return a
    codes = np.sort(np.concatenate([codes_a, new]), kind="stable")  # merges two sorted runs
    return np.stack([codes // n, codes % n], axis=1)


def _kernel(
    y: np.ndarray,
    h: np.ndarray,
    low: float,
    high: float,
    pairs: np.ndarray,
    seeds: np.ndarray,
    rings: int = 1,
) -> _Diagram | None:
    """One call of the kernel with the candidate ``pairs``; ``None`` if two targets are equal.

    With ``rings=2`` each cell is also clipped by its candidates' candidates.
    """
    assert _laguerre is not None
    n, d = y.shape
    # Cells in Morton order of their targets: neighbours then sit close in memory (35 % less
    # kernel time at N = 100,000 in 2D); a function of the targets alone, like the index
    # order of each cell's final clips, so the bits stay those of any other call.
    order = _morton_order(y) if n >= _LOCALITY_MIN_CELLS else None
    if order is not None:
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        y, h, seeds, pairs = y[order], h[order], seeds[order], rank[pairs]
    # Compressed rows of the symmetric candidate graph (scipy's conversion is a counting sort).
    graph = sp.coo_matrix(
        (
            np.ones(2 * len(pairs), dtype=np.int8),
            (
                np.concatenate([pairs[:, 0], pairs[:, 1]]),
                np.concatenate([pairs[:, 1], pairs[:, 0]]),
            ),
        ),
        shape=(n, n),
    ).tocsr()
    indptr = graph.indptr.astype(np.int64)
    nbr = graph.indices.astype(np.int64)
    volumes, centroids = np.empty(n), np.empty((n, d))
    threads = 1 if n < _THREAD_MIN_CELLS else _cpu_count()
    own, other, measure, duplicate = _laguerre.cells(
        np.ascontiguousarray(y),
        np.ascontiguousarray(h),
        np.ascontiguousarray(seeds),
        indptr,
        nbr,
        n,
        d,
        rings,
        float(low),
        float(high),
        threads,
        volumes,
        centroids,
    )
    if duplicate:
        return None
    first, second = np.frombuffer(own, np.int64), np.frombuffer(other, np.int64)
    if order is not None:
        volumes[order], centroids[order] = volumes.copy(), centroids.copy()
        first, second = order[first], order[second]
        first, second = np.minimum(first, second), np.maximum(first, second)
    facet_pairs = np.stack([first, second], axis=1)
    return volumes, centroids, facet_pairs, np.frombuffer(measure, np.float64).copy()


def _morton_order(y: np.ndarray) -> np.ndarray:
    """Indices of the targets along a Z-order (Morton) curve of their bounding box (d = 2, 3)."""
    d = y.shape[1]
    bits = 16 if d == 2 else 10
    span = float(np.ptp(y, axis=0).max())
    scale = ((1 << bits) - 1) / span if span > 0 else 0.0
    q = ((y - y.min(axis=0)) * scale).astype(np.uint64)
    # Spread each coordinate's bits d apart (the classic magic-number shifts).
    steps = (
        [(8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)]
        if d == 2
        else [(16, 0x030000FF), (8, 0x0300F00F), (4, 0x030C30C3), (2, 0x09249249)]
    )
    code = np.zeros(len(y), dtype=np.uint64)
    for k in range(d):
        x = q[:, k].copy()
        for shift, mask in steps:
            x = (x | (x << np.uint64(shift))) & np.uint64(mask)
        code |= x << np.uint64(k)
    return np.argsort(code, kind="stable")


def _cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _diagram(
    y: np.ndarray, h: np.ndarray, low: float, high: float, inward: np.ndarray | None = None
) -> _Diagram:
    """Cell measures (N,), centroids (N, d), candidate pairs (P, 2), facet measures (P,).

    Works in any dimension d >= 1: the cube's faces are (d-1)-dimensional diagrams of the
    cells that reach the boundary, with one coordinate fixed, computed by recursion.
    ``inward`` breaks ties between identical targets of equal height (on a face: the cell
    that continues into the cube wins).
    """
    n, d = y.shape
    pairs = candidate_pairs(y, h)
    if pairs.size and (y[pairs[:, 0]] == y[pairs[:, 1]]).all(axis=1).any():
        # Identical targets (a projection onto a face can make them): keep the highest.
        keep = _highest_of_duplicates(y, h, inward)
        cells, cen, sub_pairs, facets = _diagram(y[keep], h[keep], low, high)
        out_cells, out_cen = np.zeros(n), np.full((n, d), np.nan)
        out_cells[keep], out_cen[keep] = cells, cen
        return out_cells, out_cen, keep[sub_pairs], facets
    lists = _neighbour_lists(pairs, n)
    if d == 1:
        return _intervals(y, h, pairs, lists, low, high)
    measure, centre, touch = _pair_facets(y, h, pairs, lists, low, high)
    x0 = np.full(d, 0.5 * (low + high))
    # Pyramid (x0, facet): signed volume |F| <n_F, p_F - x0> / d for cell i, whose outward
    # normal is (y_j - y_i) / |y_j - y_i|; the opposite for cell j. Its centroid is apex.
    g = y[pairs[:, 1]] - y[pairs[:, 0]]
    cone = measure * (np.einsum("pd,pd->p", g, centre - x0) / np.linalg.norm(g, axis=1)) / d
    apex = x0 + (d / (d + 1.0)) * (centre - x0)
    owners = np.concatenate([pairs[:, 0], pairs[:, 1]])
    signed = np.concatenate([cone, -cone])
    volume = np.bincount(owners, weights=signed, minlength=n).astype(np.float64)
    moment = np.zeros((n, d))
    for k in range(d):
        moment[:, k] = np.bincount(owners, weights=signed * np.tile(apex[:, k], 2), minlength=n)
    # A cell meets the cube's boundary only if one of its facets does, unless one cell fills
    # the cube; cells that never reach the boundary cannot change the faces' diagrams.
    if (measure > 0).any():
        rim = np.unique(pairs[touch])
    else:
        rim = np.flatnonzero(np.diff(lists[0]) > 0) if n > 1 else np.zeros(1, dtype=np.int64)
    for k in range(d):
        for side in (low, high):
            inward = (1.0 if side == low else -1.0) * y[rim, k]
            face_cells, face_cen, _, _ = _diagram(
                np.delete(y[rim], k, axis=1), h[rim] + side * y[rim, k], low, high, inward
            )
            lit = face_cells > 0
            cells = rim[lit]
            point = np.insert(face_cen[lit], k, side, axis=1)
            cone_f = face_cells[lit] * (0.5 * (high - low)) / d
            volume[cells] += cone_f
            moment[cells] += cone_f[:, None] * (x0 + (d / (d + 1.0)) * (point - x0))
    return (*_finish(volume, moment), pairs, measure)


def _finish(volume: np.ndarray, moment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    volume = np.maximum(volume, 0.0)
    centroids = np.full(moment.shape, np.nan)
    full = volume > 0
    centroids[full] = moment[full] / volume[full, None]
    return volume, centroids


def _highest_of_duplicates(y: np.ndarray, h: np.ndarray, inward: np.ndarray | None) -> np.ndarray:
    """Indices of the rows to keep: one per distinct target, the highest.

    Heights within round-off of the group's highest tie; among those the largest ``inward``
    wins (then the first).
    """
    order = np.lexsort(y.T[::-1])
    ys, hs = y[order], h[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (ys[1:] != ys[:-1]).any(axis=1)
    group = np.cumsum(first) - 1
    top = np.maximum.reduceat(hs, np.flatnonzero(first))[group]
    near = hs >= top - _TIE_TOL * (1.0 + np.abs(top))
    key = np.zeros(len(order)) if inward is None else inward[order]
    rank = np.lexsort((np.arange(len(order)), -hs, -key, ~near, group))
    lead = np.ones(len(rank), dtype=bool)
    lead[1:] = group[rank[1:]] != group[rank[:-1]]
    return np.sort(order[rank[lead]])


def _neighbour_lists(pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate neighbours in compressed rows (``nbr[indptr[i]:indptr[i+1]]``) and pair codes.

    The codes i * n + j (i < j) of the candidate pairs, sorted, answer "are j and k
    candidates of each other" by binary search.
    """
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.argsort(src, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst[order], np.sort(pairs[:, 0] * n + pairs[:, 1])


def _cuts(
    y: np.ndarray,
    h: np.ndarray,
    owner: np.ndarray,
    across: np.ndarray | None,
    lists: tuple[np.ndarray, np.ndarray, np.ndarray],
    common: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-spaces <x, g> + c >= 0 of the owners' candidates cutting each item.

    A facet between ``owner`` and ``across`` is not cut by its own plane (round-off would
    make that an arbitrary cut). With ``common`` only the common candidates of both cells cut
    it: the facet's edges are dual to triangles of the triangulation through that pair, so
    the others are redundant (fewer clipping rounds in 3D).

    Returns:
        ``(item, g, c)``: the item of each half-space (sorted), shapes ``(C,)``, ``(C, d)``,
        ``(C,)``.
    """
    indptr, nbr, codes = lists
    n = y.shape[0]
    deg = np.diff(indptr)[owner]
    item = np.repeat(np.arange(owner.size), deg)
    first = np.repeat(indptr[owner] - (np.cumsum(deg) - deg), deg)
    other = nbr[first + np.arange(item.size)]
    if across is not None:
        j = across[item]
        mask = other != j
        if common:
            code = np.minimum(j, other) * n + np.maximum(j, other)
            at = np.minimum(np.searchsorted(codes, code), codes.size - 1)
            mask &= codes[at] == code
        item, other = item[mask], other[mask]
    own = owner[item]
    return item, y[own] - y[other], h[own] - h[other]


def _cube_cuts(
    origin: np.ndarray, basis: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """The cube's 2d half-spaces in each item's plane coordinates x = origin + basis^T z.

    Returns:
        ``(alpha, beta)`` of shapes ``(F, 2d)`` and ``(F, 2d, d - 1)``: ``alpha + <beta, z>``
        is x_k - low (first d) and high - x_k (last d).
    """
    alpha = np.concatenate([origin - low, high - origin], axis=1)
    along = np.swapaxes(basis, 1, 2)  # (F, d, d - 1): the k-th row is d x_k / dz
    return alpha, np.concatenate([along, -along], axis=1)


def _intervals(
    y: np.ndarray,
    h: np.ndarray,
    pairs: np.ndarray,
    lists: tuple[np.ndarray, np.ndarray, np.ndarray],
    low: float,
    high: float,
) -> _Diagram:
    """A 1D diagram: lengths (N,), midpoints (N, 1), pairs, and 1 for pairs meeting inside."""
    n = y.shape[0]
    item, g, c = _cuts(y, h, np.arange(n), None, lists)
    t0, t1 = clip_segments(c, g[:, 0], item, np.full(n, low), np.full(n, high))
    length = np.maximum(t1 - t0, 0.0)
    if n > 1:
        length[np.diff(lists[0]) == 0] = 0.0  # not a hull vertex: empty
    i, j = pairs[:, 0], pairs[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        meet = (h[j] - h[i]) / (y[i, 0] - y[j, 0])  # where the two scores cross
    tol = _BOUNDARY_TOL * (high - low)

    def ends_at(cell: np.ndarray) -> np.ndarray:
        return (np.abs(meet - t0[cell]) <= tol) | (np.abs(meet - t1[cell]) <= tol)

    touching = (length[i] > 0) & (length[j] > 0) & ends_at(i) & ends_at(j)
    touching &= (meet > low + tol) & (meet < high - tol)
    return (*_finish(length, (0.5 * (t0 + t1) * length)[:, None]), pairs, touching * 1.0)


def _pair_facets(
    y: np.ndarray,
    h: np.ndarray,
    pairs: np.ndarray,
    lists: tuple[np.ndarray, np.ndarray, np.ndarray],
    low: float,
    high: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Facets W_i cap W_j of the candidate pairs.

    Returns:
        Measures (P,), centroids (P, d), and whether each meets the cube's boundary (P,).
    """
    n_pairs, d = pairs.shape[0], y.shape[1]
    if n_pairs == 0:
        return np.zeros(0), np.zeros((0, d)), np.zeros(0, dtype=bool)
    i, j = pairs[:, 0], pairs[:, 1]
    g = y[i] - y[j]
    norm = np.linalg.norm(g, axis=1)
    unit = g / norm[:, None]
    x0 = np.full(d, 0.5 * (low + high))
    # Plane origin: the cube centre's projection, so the cube's section lies within
    # sqrt(d) / 2 of it.
    offset = unit @ x0 + (h[i] - h[j]) / norm  # signed distance from x0 to the plane
    origin = x0 - offset[:, None] * unit
    # A bisector lying in a face of the cube (grids do this) bounds a cell outside the cube:
    # the face's diagram counts that piece, the pair's facet is of measure zero in the cube.
    in_face = (np.abs(unit).max(axis=1) >= 1.0 - _TIE_TOL) & (
        np.abs(np.abs(offset) - 0.5 * (high - low)) <= _BOUNDARY_TOL * (high - low)
    )
    basis = _plane_basis(unit)
    item, gc, cc = _cuts(y, h, i, j, lists, common=d > 2)
    alpha = cc + (origin[item] * gc).sum(axis=1)
    beta = (basis[item] * gc[:, None, :]).sum(axis=2)
    cube_alpha, cube_beta = _cube_cuts(origin, basis, low, high)
    if d == 2:
        lower, upper = segment_bounds(cube_alpha, cube_beta[:, :, 0])
        t0, t1 = clip_segments(alpha, beta[:, 0], item, lower.max(axis=1), upper.min(axis=1))
        length = np.maximum(t1 - t0, 0.0)
        ts = np.where(length[:, None] > 0, np.stack([t0, t1], axis=1), 0.0)
        ends = origin[:, None, :] + ts[:, :, None] * basis
        touch = (length > 0) & _on_boundary(ends, np.full(ends.shape[:2], True), low, high)
        measure, centre = length, ends.mean(axis=1)
    else:
        cube = (cube_alpha, cube_beta)
        measure, centre, touch = _polygon_facets(
            origin, basis, cube, (item, alpha, beta), low, high
        )
    measure[in_face], touch[in_face] = 0.0, False
    return measure, centre, touch


def _polygon_facets(
    origin: np.ndarray,
    basis: np.ndarray,
    cube: tuple[np.ndarray, np.ndarray],
    cuts: tuple[np.ndarray, np.ndarray, np.ndarray],
    low: float,
    high: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3D facets: clip each plane's square by the cube's and the candidates' half-planes."""
    (cube_alpha, cube_beta), (item, alpha, beta) = cube, cuts
    n_facets, n_cube = cube_alpha.shape
    counts = n_cube + np.bincount(item, minlength=n_facets)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(n_facets, dtype=np.int64)
    rank[order] = np.arange(n_facets)
    alpha_p = np.ones((n_facets, int(counts.max())))
    beta_p = np.zeros((*alpha_p.shape, 2))
    alpha_p[:, :n_cube] = cube_alpha[order]
    beta_p[:, :n_cube] = cube_beta[order]
    extra = counts - n_cube
    pos = n_cube + np.arange(item.size) - (np.cumsum(extra) - extra)[item]
    alpha_p[rank[item], pos] = alpha
    beta_p[rank[item], pos] = beta
    radius = float(np.sqrt(3.0)) * (high - low)
    area, z, verts, n_verts = clip_polygons(alpha_p, beta_p, counts[order], radius)
    area, z, verts, n_verts = area[rank], z[rank], verts[rank], n_verts[rank]
    corners = origin[:, None, :] + np.einsum("fwk,fkd->fwd", verts, basis)
    valid = np.arange(verts.shape[1]) < n_verts[:, None]
    touch = (area > 0) & _on_boundary(corners, valid, low, high)
    return area, origin + np.einsum("fk,fkd->fd", z, basis), touch


def _on_boundary(points: np.ndarray, valid: np.ndarray, low: float, high: float) -> np.ndarray:
    """Whether any valid point of each row (``points`` ``(F, W, d)``) is on the cube's faces."""
    tol = _BOUNDARY_TOL * (high - low)
    near = (np.abs(points - low) <= tol) | (np.abs(points - high) <= tol)
    return np.asarray((near.any(axis=2) & valid).any(axis=1), dtype=bool)


def _plane_basis(unit: np.ndarray) -> np.ndarray:
    """Orthonormal bases of the planes with unit normals ``unit``, shape ``(F, d - 1, d)``."""
    if unit.shape[1] == 2:
        return np.stack([-unit[:, 1], unit[:, 0]], axis=1)[:, None, :]
    # The axis least aligned with the normal gives a well-conditioned first direction.
    axis = np.eye(3)[np.argmin(np.abs(unit), axis=1)]
    first = np.cross(unit, axis)
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    return np.stack([first, np.cross(unit, first)], axis=1)
