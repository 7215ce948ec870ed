"""Hierarchical start of the Monte Carlo fit: transport to cluster centroids first.

From the Voronoi start h_i = -|y_i|^2 / 2 of clustered targets, thousands of cells are empty
(measured: 3,708 of 10,000 at d = 16) and the first-order warm-up spends most of its steps
filling them. Instead:

1. Cluster the targets into K groups by k-means (Lloyd iterations whose assignments are cell
   queries: the nearest centroid c maximises <y, c> - |c|^2 / 2).
2. Fit OT from the cube to the K centroids mu_c weighted by their groups' masses (a small
   problem: a few hundred thousand samples), giving heights H_c and regions R_c of mass ~w_c.
3. Split each region among its members: with offsets delta_i = y_i - mu_c, member heights
   h_i = H_c - <delta_i, m_c> - lambda_c |delta_i|^2 / 2 make the score
   <x, y_i> + h_i = <x, mu_c> + H_c + lambda_c (<z, delta_i> - |delta_i|^2 / 2),
   z = (x - m_c) / lambda_c: the region's score plus the Voronoi diagram of the offsets seen
   from the region's mass centre m_c, scaled by lambda_c = a * r_c / s_c (r_c the region's rms
   radius, s_c the members' rms offset) so that it spreads the members over the region.

Measured at N = 10,000, d = 16 (ten Gaussian clusters, K = 100, cells counted on 400,000
samples): the start has L1 0.67 and 68 empty cells against the Voronoi start's 1.40 and 3,708
(a = 0.5 was the best of 0.15 .. 4), and the warm-up ends after 13 steps instead of 42.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from solver.cells.index import CellIndex
from solver.fitting.config import FitConfig
from solver.measures import SourceMeasure
from solver.problem import OTProblem
from solver.seeding import derive_seed

# Region spread factor a of the module docstring (best of 0.15, 0.25, 0.35, 0.5, 1, 2, 4).
_SPREAD = 0.5
# Samples per cluster of the pass that measures each region's mass centre and radius.
_REGION_SAMPLES = 256
_KMEANS_ITERS = 20
# Rows per block of the start's float64 row arithmetic (32 MB at d = 64).
_BLOCK_ROWS = 1 << 16
_COARSE_STREAM, _REGION_STREAM, _KMEANS_STREAM = 7, 8, 9
# Accuracy of the coarse fit (it only has to place the regions), and its own iteration limit:
# the fit's max_iter counts the fit's iterations, so a resumed fit with another max_iter
# continues from the same start (a coarse fit of K <= sqrt(N) cells needs a few dozen).
_COARSE_L1 = 0.1
_COARSE_MAX_ITER = 1000

# Fits a coarse problem with a config; returns its heights in the problem's coordinates.
FitCoarse = Callable[[OTProblem, FitConfig], np.ndarray]


def coarse_clusters(n_targets: int, config: FitConfig) -> int:
    """K of a fit's hierarchical start; 0 when the fit has no coarse fit.

    ``newton.coarse_clusters`` (``None``: round(sqrt(N))), or 0 when it is 0 or too large
    for N (4 K > N).
    """
    k = config.newton.coarse_clusters
    k = default_clusters(n_targets) if k is None else k
    return k if 0 < k and 4 * k <= n_targets else 0


def start_heights(
    problem: OTProblem,
    config: FitConfig,
    fit_coarse: FitCoarse,
    *,
    deadline: float | None = None,
) -> np.ndarray | None:
    """The hierarchical start of a Monte Carlo fit (steps 1-3 of the module docstring).

    Args:
        problem: the fit's problem in its internal frame.
        config: the fit's settings (``newton.coarse_clusters`` sets K; ``None``: round(sqrt(N))).
        fit_coarse: fits the coarse problem (the driver passes its own fit, so this module
            needs no driver); it gets a Newton config without a hierarchical start of its own,
            a target of at least 0.1, its own iteration limit and a seed derived from the
            fit's (the time budget stays the fit's).
        deadline: a ``time.perf_counter`` value (the fit's time budget) or ``None``. The
            clustering checks it after every k-means++ centre and Lloyd iteration: past it,
            the clusters found so far make the coarse problem, so a fit whose budget ends in
            its start returns at once instead of finishing the clustering of N targets.

    Returns:
        h, shape ``(N,)``, float64, mean zero; ``None`` when K is 0 or too large for N.

    """
    k = coarse_clusters(problem.n_targets, config)
    if k == 0:
        return None
    targets = np.asarray(problem.targets, dtype=np.float32)  # the index's precision
    coarse_seed, region_seed = seeds(config.seed)
    labels, mu, mass = coarse_problem(targets, problem.weights, k, coarse_seed, deadline)
    coarse = OTProblem(
        targets=mu, weights=mass, source=problem.source, inverse=np.arange(mu.shape[0])
    )
    heights = fit_coarse(
        coarse,
        replace(
            config,
            method="newton",
            target_l1=max(config.target_l1, _COARSE_L1),
            max_iter=_COARSE_MAX_ITER,
            seed=coarse_seed,
            newton=replace(config.newton, coarse_clusters=0),
        ),
    )
    return hierarchical_heights(
        targets, problem.weights, problem.source, labels, mu, heights, region_seed
    )


def default_clusters(n_targets: int) -> int:
    """K = round(sqrt(N)), the coarse problem's size (0: too few targets to bother)."""
    k = round(math.sqrt(n_targets))
    return k if k >= 8 and n_targets >= 4 * k else 0


def kmeans(
    points: np.ndarray,
    k: int,
    seed: int,
    *,
    iters: int = _KMEANS_ITERS,
    deadline: float | None = None,
) -> np.ndarray:
    """Lloyd's k-means from a k-means++ start; each point's cluster label, shape ``(N,)``.

    k-means++ draws each new centre with probability proportional to the squared distance to
    the nearest centre so far (``seed`` drives the draws); an emptied cluster keeps its
    centroid. Assignments are exact cell queries (backend ``"auto"``). Past ``deadline`` (a
    ``time.perf_counter`` value) the seeding stops with the centres drawn so far (at least
    one) and the points get the labels of their nearest centre without further iterations.
    """
    x = np.asarray(points, dtype=np.float64)
    centres = _kmeans_plus_plus(x, k, np.random.default_rng(seed), deadline)
    k = centres.shape[0]
    labels = np.zeros(x.shape[0], dtype=np.int64)
    x32 = np.asarray(points, dtype=np.float32)  # no copy for float32 points (a fit's targets)
    for _ in range(iters):
        index = CellIndex(centres, -0.5 * np.square(centres).sum(axis=1))
        new = index.assign(x32)
        if _past(deadline):
            return new
        counts = np.bincount(new, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, new, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def _kmeans_plus_plus(
    x: np.ndarray, k: int, rng: np.random.Generator, deadline: float | None = None
) -> np.ndarray:
    # Squared distances from norms and one matrix-vector product per centre: an N x d
    # difference array per centre cost 0.5 GB and most of the start's time at N = 10^6, d = 64.
    norms = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]))

    def squared_distance(pick: int) -> np.ndarray:
        c = x[pick]
        d2 = np.maximum(norms - 2.0 * (x @ c) + norms[pick], 0.0)
        d2[pick] = 0.0
        return d2

    first = int(rng.integers(x.shape[0]))
    centres[0] = x[first]
    nearest = squared_distance(first)
    for c in range(1, k):
        if _past(deadline):
            return centres[:c]
        total = nearest.sum()
        pick = rng.choice(x.shape[0], p=nearest / total) if total > 0 else rng.integers(x.shape[0])
        centres[c] = x[pick]
        np.minimum(nearest, squared_distance(int(pick)), out=nearest)
    return centres


def hierarchical_heights(
    targets: np.ndarray,
    weights: np.ndarray,
    source: SourceMeasure,
    labels: np.ndarray,
    centroids: np.ndarray,
    coarse_heights: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Member heights from a fitted coarse problem (step 3 of the module docstring).

    Args:
        targets: y in the fit's internal frame, shape ``(N, d)``.
        weights: v, shape ``(N,)``.
        source: the source measure.
        labels: cluster of each target, shape ``(N,)``, values in ``0 .. K - 1``.
        centroids: the clusters' weighted centroids mu (same frame), shape ``(K, d)``.
        coarse_heights: fitted heights H of the K centroids (same frame), shape ``(K,)``.
        seed: seed of the region-statistics pass.

    Returns:
        h, shape ``(N,)``, float64, mean zero.
    """
    k = coarse_heights.shape[0]
    mass = np.bincount(labels, weights=weights, minlength=k)
    mu = centroids.astype(np.float64)
    x = source.sample(_REGION_SAMPLES * k, seed).astype(np.float64)
    region = CellIndex(mu, coarse_heights).assign(x.astype(np.float32))
    hits = np.bincount(region, minlength=k)
    centre = np.zeros_like(mu)
    np.add.at(centre, region, x)
    seen = hits > 0
    centre[seen] /= hits[seen, None]
    centre[~seen] = mu[~seen]
    sq = np.square(x - centre[region]).sum(axis=1)
    region_r2 = np.bincount(region, weights=sq, minlength=k) / np.maximum(hits, 1)
    # Each target's squared offset from its centroid and the offset's product with its region
    # centre, over blocks of rows: whole N x d float64 temporaries cost 0.5 GB each at
    # N = 10^6, d = 64 (the row sums are the same either way).
    offset2 = np.empty(labels.shape[0])
    along = np.empty(labels.shape[0])
    for rows in _row_blocks(labels.shape[0]):
        delta = targets[rows].astype(np.float64) - mu[labels[rows]]
        offset2[rows] = np.square(delta).sum(axis=1)
        along[rows] = (delta * centre[labels[rows]]).sum(axis=1)
    member_s2 = np.bincount(labels, weights=weights * offset2, minlength=k) / np.maximum(
        mass, 1e-300
    )
    lam = np.ones(k)
    ok = seen & (member_s2 > 0) & (region_r2 > 0)
    lam[ok] = _SPREAD * np.sqrt(region_r2[ok] / member_s2[ok])
    h = coarse_heights[labels] - along - 0.5 * lam[labels] * offset2
    return h - h.mean()


def _row_blocks(n: int) -> Iterator[slice]:
    """Slices of ``_BLOCK_ROWS`` rows covering ``range(n)`` in order."""
    for lo in range(0, n, _BLOCK_ROWS):
        yield slice(lo, min(lo + _BLOCK_ROWS, n))


def coarse_problem(
    targets: np.ndarray,
    weights: np.ndarray,
    k: int,
    seed: int,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster the targets: labels ``(N,)``, centroids ``(K', d)`` and masses ``(K',)``.

    Clusters that ended empty are dropped and the labels renumbered, so every centroid has mass
    (fewer than ``k`` also when the clustering stopped at ``deadline``; see :func:`kmeans`).
    """
    labels = kmeans(targets, k, derive_seed(seed, _KMEANS_STREAM), deadline=deadline)
    used, labels = np.unique(labels, return_inverse=True)
    mass = np.bincount(labels, weights=weights, minlength=used.size)
    mu = np.zeros((used.size, targets.shape[1]))
    for rows in _row_blocks(labels.shape[0]):  # in order: the same sums as all rows at once
        np.add.at(mu, labels[rows], weights[rows, None] * targets[rows].astype(np.float64))
    return labels, (mu / mass[:, None]).astype(np.float32), mass / mass.sum()


def seeds(seed: int) -> tuple[int, int]:
    """Seeds of the coarse fit and of the region pass, derived from the fit's seed."""
    return derive_seed(seed, _COARSE_STREAM), derive_seed(seed, _REGION_STREAM)
