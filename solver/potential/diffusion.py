"""Diffusion coordinates of the targets and their spectral clusters (the ``"diffusion"`` frame).

The singular set should separate the modes of the target measure, and a mode is a region the
data connects, not a region of small angles: two latents of one class can be far apart yet
joined by a chain of close neighbours, and two latents of different classes can be close with
an empty strip between them. A random walk on the targets' nearest-neighbour graph sees this:
it mixes quickly inside a mode and slowly between modes.

Construction (docs/singular.md, "diffusion frame"):

1. The k-nearest-neighbour graph of the targets (k = ``DIFFUSION_NEIGHBOURS``) with Gaussian
   affinities at each point's own scale, w_ij = exp(-|y_i - y_j|^2 / (s_i s_j)), s_i the
   distance from y_i to its k-th neighbour, symmetrised (an edge when either end lists the
   other). Scale-free: the coordinates do not depend on where or how large the latents are.
2. The walk's operator D^-1/2 W D^-1/2 (D the degrees) and its leading eigenpairs
   1 = lambda_1 >= lambda_2 >= ... >= lambda_{M+1} (M = ``MAX_CLUSTERS``). A mode that the
   walk barely leaves contributes an eigenvalue near 1: the walk leaves it with probability
   about 1 - lambda per step. The number of modes K (:func:`count_modes`):
   - K counts the *slow* eigenvalues, those the walk leaves both slowly in absolute
     terms, 1 - lambda <= 1 / ``MODE_STEPS`` (it stays ``MODE_STEPS`` steps or more), and
     slowly against the finest structure the computed spectrum resolves,
     1 - lambda <= ``MODE_CONTRAST`` (1 - lambda_{M+1}). A step of the walk shrinks as the
     sample grows, so every 1 - lambda falls with N: the absolute level alone counts more
     modes in more data (PCA of MNIST: 6, 10 and 17 clusters at N = 1,800, 6,000 and
     20,000); the contrast does not (9, 9 and 9), and the absolute level keeps a small set's
     coarse spectrum from splitting one blob (300 points in 6D: 4 clusters by the contrast
     alone, 1 with both). A count moves by one when one eigenvalue crosses a level, so
     nearby spectra give nearby counts. The previous choice, the largest drop of the 3-step
     walk's spectrum, jumped between far-apart peaks of nearly equal height (digits: 9 to 28
     clusters for autoencoders that differ only in their float rounding; docs/singular.md);
   - except that a low-dimensional mode has slow halves of its own (two Gaussian modes in
     3D: 6 slow eigenvalues). So when the slow eigenvalues show a clear separation of time
     scales at some K, (1 - lambda_{K+1}) / (1 - lambda_K) >= ``CLEAR_SEPARATION``, and the
     slow eigenvalues beyond K are those of a continuum, each at least ``CONTINUUM`` of the
     power law that 1 - lambda follows over the upper half of the computed spectrum (a
     region's own vibrations; a mode's eigenvalue lies far below it), K is that K. On
     Fashion-MNIST's PCA the top two modes (footwear and the rest) separate just as clearly,
     but the finer slow eigenvalues lie at 0.5-0.85 of the power law: they are modes, and
     all of them count.
3. Diffusion coordinates psi_i = (lambda_m^t phi_m(i) / sqrt(d_i)) for m = 2..K (t =
   ``DIFFUSION_TIME``): |psi_i - psi_j| is the diffusion distance, small when the walk
   connects i and j through dense data, large across an empty region.
4. Spectral clusters: k-means (K clusters) of the rows of (phi_1..phi_K), each scaled to unit
   length, from ``KMEANS_RESTARTS`` seeded k-means++ starts. Each start is a partition; a pair
   of targets is *separated* when at least ``SEPARATION_QUORUM`` of the partitions put its ends
   in different clusters. The share of adjacent pairs that are separated is how many facets the
   data says are singular (the ``clusters`` threshold rule). One k-means run also cuts through
   the inside of a mode wherever its start happens to place two centres there, and such a cut
   moves from start to start; the boundaries between modes do not, so the quorum keeps them and
   drops the cuts (docs/singular.md, "consensus of k-means starts").
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh

from solver.cells.index import nearest_neighbours
from solver.fitting.hierarchical import kmeans
from solver.seeding import derive_seed

# How the number of modes was chosen (count_modes).
ModeCriterion = Literal["components", "slow modes", "separation", "given"]

# Neighbours of each target in the graph; measured on digits latents (ROC AUC of the diffusion
# distance for "different digit": 0.967 with 7, 0.977 with 10, 0.974 with 15).
DIFFUSION_NEIGHBOURS = 10
# Steps of the walk: damps the coordinates of the faster-mixing eigenvectors (digits: AUC
# 0.970 with t = 1, 0.971 with 3, 0.975 with 10; the flagged pairs hardly change).
DIFFUSION_TIME = 3
# Largest number of modes K may be (eigenpairs computed: one more, the finest resolved).
MAX_CLUSTERS = 50
# A slow mode: the walk stays in it this many steps or more on average (lambda >= 0.95).
MODE_STEPS = 20
# ... and leaves it at most this share as often as it leaves a piece of the finest structure
# the spectrum resolves (1 - lambda <= 0.25 (1 - lambda_{M+1})). Measured on twelve digits
# autoencoders (five seeds, five float code paths) and on PCA projections of MNIST and
# Fashion-MNIST at several sample sizes (docs/singular.md, "how many modes").
MODE_CONTRAST = 0.25
# A clear separation of time scales among the slow eigenvalues (two Gaussian modes in 3D
# or 4D: 3.6 to 8; the twelve digits autoencoders: at most 1.74) ...
CLEAR_SEPARATION = 2.5
# ... counts only when the slow eigenvalues beyond it are the continuum's: each 1 - lambda
# at least this share of the tail's power law (two Gaussian modes in 3D: 0.93-1.24; the
# finer modes of Fashion-MNIST's PCA: from 0.50).
CONTINUUM = 0.8
# k-means starts that vote on which pairs are separated. Each costs about 1 s at N = 60,000,
# K = 15, against about 90 s for the eigenpairs.
KMEANS_RESTARTS = 8
# Share of the starts that must split a pair for it to count as separated. Measured on digits
# and on the 60,000 full-data MNIST latents, four groups of 8 starts each (docs/singular.md):
# with a majority the singular flag's precision for "different labels" was 0.905-0.908
# (digits) and 0.886-0.906 (MNIST); with 3/4 it was 0.908-0.912 and 0.906-0.916, for recall
# 0.926-0.929 and 0.903-0.914; with 7/8, MNIST's recall fell to 0.883-0.892.
SEPARATION_QUORUM = 0.75
# Below this many targets the eigenpairs come from a dense eigensolver.
_DENSE_LIMIT = 1000
# Distances are floored here before they scale an affinity.
_SCALE_FLOOR = 1e-12
# Escape probabilities 1 - lambda are floored here (lambda = 1 up to rounding: a component).
_ESCAPE_FLOOR = 1e-12
# Embeddings kept for reuse (diffusion_embedding), and the lock of that cache.
_CACHE_SIZE = 4
_CACHE: OrderedDict[tuple, DiffusionEmbedding] = OrderedDict()
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class DiffusionEmbedding:
    """The targets' diffusion coordinates and spectral clusters.

    Attributes:
        coords: psi, shape ``(N, K - 1)`` (``(N, 0)`` with one cluster), float64; rounded
            through float32 so a saved and reloaded set scores pairs identically.
        clusters: spectral cluster of each target in the first k-means start, shape ``(N,)``,
            int64 in ``[0, K)``.
        partitions: the cluster of each target in every k-means start, shape ``(R, N)``,
            int64 (``R = KMEANS_RESTARTS``; one row of zeros with one cluster).
        eigenvalues: the leading eigenvalues of the walk's operator, descending.
        n_clusters: K (:func:`count_modes`).
        separation: (1 - lambda_{K+1}) / (1 - lambda_K), how many times more slowly the walk
            leaves the K modes than the next finer structure (``inf`` for separate
            components, ``nan`` for one cluster).
        chosen_by: how K was chosen (step 2): ``"components"``, ``"slow modes"``,
            ``"separation"`` (a clear separation above a continuum) or ``"given"``
            (``n_clusters`` was passed).

    """

    coords: np.ndarray
    clusters: np.ndarray
    partitions: np.ndarray
    eigenvalues: np.ndarray
    n_clusters: int
    separation: float
    chosen_by: ModeCriterion

    def separated(self, pairs: np.ndarray) -> np.ndarray:
        """Whether the quorum of k-means starts split each pair, shape ``(P,)``."""
        return separated_pairs(pairs, self.partitions)

    def describe(self) -> str:
        """How many clusters and why, in words (e.g. for a singular set's ``reason``)."""
        count = f"{self.n_clusters} spectral cluster{'s' if self.n_clusters != 1 else ''}"
        if self.chosen_by == "components":
            return f"{count} (separate components of the neighbour graph)"
        if self.chosen_by == "given":
            return f"{count} (given)"
        if self.chosen_by == "separation":
            ratio = f"{self.separation:.3g}x"
            return f"{count} (the walk leaves them {ratio} more slowly than finer structure)"
        return f"{count} (the walk's slow modes)"


def diffusion_embedding(
    targets: np.ndarray,
    *,
    neighbours: int = DIFFUSION_NEIGHBOURS,
    time: int = DIFFUSION_TIME,
    max_clusters: int = MAX_CLUSTERS,
    n_clusters: int | None = None,
    seed: int = 0,
) -> DiffusionEmbedding:
    """Diffusion coordinates and spectral clusters of ``targets`` (module docstring).

    The embedding depends on the targets only, not on the heights, so every potential
    published during one fit shares it: the last ``_CACHE_SIZE`` results are kept, keyed by
    the targets' bytes and the arguments (N = 60,000, d = 32 costs minutes on 2 cores).

    Args:
        targets: y, shape ``(N, d)``, distinct rows (merged duplicates).
        neighbours: k of the nearest-neighbour graph (capped at sqrt(N), so that a small
            set's graph is not complete).
        time: t, the walk's steps.
        max_clusters: the largest K.
        n_clusters: K itself instead of :func:`count_modes`'s (a known number of modes; the
            benchmarks compare ways of counting with it), at most ``max_clusters``.
        seed: drives the eigensolver's start vector and the k-means start.

    Returns:
        The embedding; with fewer than 3 targets, one cluster and no coordinates.

    """
    y = np.ascontiguousarray(targets, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"targets must have shape (N, d), got {y.shape}")
    if neighbours < 1 or time < 0 or max_clusters < 1:
        raise ValueError("neighbours and max_clusters must be >= 1 and time >= 0")
    if n_clusters is not None and not 1 <= n_clusters <= max_clusters:
        raise ValueError(f"n_clusters must be in [1, {max_clusters}], got {n_clusters}")
    digest = hashlib.sha256(y.tobytes()).hexdigest()
    key = (digest, y.shape, neighbours, time, max_clusters, n_clusters, seed)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    result = _embed(y, neighbours, time, max_clusters, n_clusters, seed)
    for array in (result.coords, result.clusters, result.partitions, result.eigenvalues):
        array.flags.writeable = False  # shared by every caller of the cache
    with _CACHE_LOCK:
        _CACHE[key] = result
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return result


def _embed(
    y: np.ndarray, neighbours: int, time: int, max_clusters: int, forced: int | None, seed: int
) -> DiffusionEmbedding:
    n = y.shape[0]
    if n < 3:
        return _one_cluster(n)
    k = min(neighbours, max(1, math.isqrt(n)))  # a small set must not be one complete graph
    affinity, degree = _graph(y, k)
    values, vectors = _leading_eigenpairs(affinity, degree, min(max_clusters + 1, n - 1), seed)
    components = int(connected_components(affinity, directed=False)[0])
    n_clusters, chosen_by = count_modes(values, components)
    if forced is not None:
        n_clusters, chosen_by = max(1, min(forced, values.size - 1)), "given"
    separation = _separation(values, n_clusters)
    if n_clusters == 1:
        return _one_cluster(n, values, separation, chosen_by)
    walk = np.clip(values, 0.0, None) ** time  # eigenvalues of the t-step walk
    psi = vectors[:, 1:n_clusters] / np.sqrt(degree)[:, None] * walk[1:n_clusters]
    rows = vectors[:, :n_clusters]
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _SCALE_FLOOR)
    partitions = np.stack(
        [kmeans(rows, n_clusters, derive_seed(seed, start)) for start in range(KMEANS_RESTARTS)]
    )
    return DiffusionEmbedding(
        coords=psi.astype(np.float32).astype(np.float64),
        clusters=partitions[0],
        partitions=partitions,
        eigenvalues=values,
        n_clusters=n_clusters,
        separation=separation,
        chosen_by=chosen_by,
    )


def count_modes(eigenvalues: np.ndarray, components: int = 1) -> tuple[int, ModeCriterion]:
    """The number of modes K from the walk's leading eigenvalues (module docstring, step 2).

    Args:
        eigenvalues: lambda_1 >= lambda_2 >= ... of D^-1/2 W D^-1/2, descending; the last
            one is the finest structure resolved, and K is at most one less than their number.
        components: connected components of the graph; above 1 they are the modes.

    Returns:
        ``(K, criterion)``: ``"components"``; ``"slow modes"``: the eigenvalues with
        1 - lambda at most 1 / ``MODE_STEPS`` and at most ``MODE_CONTRAST`` times
        1 - lambda_last (at least 1); or ``"separation"``: fewer, where the slow eigenvalues
        separate clearly above a continuum.

    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.size < 2:
        return 1, "slow modes"
    escape = np.maximum(1.0 - values, _ESCAPE_FLOOR)
    level = min(1.0 / MODE_STEPS, MODE_CONTRAST * escape[-1])
    slow = int(np.count_nonzero(escape <= level))  # a component's eigenvalue is 1: counted
    slow = min(max(slow, components, 1), values.size - 1)
    if slow >= 3:
        ratios = escape[2:slow] / escape[1 : slow - 1]  # ratios[K - 2]: K = 2 .. slow - 1
        k = int(np.argmax(ratios)) + 2
        if ratios[k - 2] >= CLEAR_SEPARATION and _continuum(escape, k, slow):
            return k, "components" if 1 < components == k else "separation"
    return slow, "components" if 1 < components == slow else "slow modes"


def _continuum(escape: np.ndarray, k: int, slow: int) -> bool:
    """Whether escape rates k+1..slow lie on the tail's power law (at least CONTINUUM of it).

    The power law is fitted to log(1 - lambda) against log(index) over the upper half of the
    computed spectrum; a smooth region's own eigenvalues follow one (Weyl's law), a mode's
    lies far below it.
    """
    index = np.arange(1, escape.size + 1, dtype=np.float64)
    tail = slice(escape.size // 2, escape.size)
    if escape.size - escape.size // 2 < 2:
        return False
    slope, offset = np.polyfit(np.log(index[tail]), np.log(escape[tail]), 1)
    law = np.exp(offset + slope * np.log(index[k:slow]))
    return bool(np.all(escape[k:slow] >= CONTINUUM * law))


def _separation(values: np.ndarray, k: int) -> float:
    """(1 - lambda_{K+1}) / (1 - lambda_K): inf when lambda_K = 1, nan for K = 1."""
    if k < 2 or k >= values.size:
        return math.nan
    escape = 1.0 - values[k - 1 : k + 1]
    return math.inf if escape[0] <= _ESCAPE_FLOOR else float(escape[1] / escape[0])


def separated_pairs(pairs: np.ndarray, partitions: np.ndarray) -> np.ndarray:
    """Whether ``SEPARATION_QUORUM`` of ``partitions`` put each pair's ends in different clusters.

    Args:
        pairs: target index pairs, shape ``(P, 2)``.
        partitions: cluster labels, shape ``(R, N)`` (or ``(N,)``: one partition).

    Returns:
        Shape ``(P,)``, bool.

    """
    labels = np.atleast_2d(np.asarray(partitions))
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if p.size and (p.min() < 0 or p.max() >= labels.shape[1]):
        raise ValueError(f"pair indices must be in [0, {labels.shape[1]})")
    split = (labels[:, p[:, 0]] != labels[:, p[:, 1]]).sum(axis=0)
    return split >= SEPARATION_QUORUM * labels.shape[0]


def diffusion_distances(coords: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """|psi_i - psi_j| for each pair, shape ``(P,)``, float64."""
    psi = np.asarray(coords, dtype=np.float64)
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if p.size and (p.min() < 0 or p.max() >= psi.shape[0]):
        raise ValueError(f"pair indices must be in [0, {psi.shape[0]})")
    return np.linalg.norm(psi[p[:, 0]] - psi[p[:, 1]], axis=1)


def _one_cluster(
    n: int,
    values: np.ndarray | None = None,
    separation: float = math.nan,
    chosen_by: ModeCriterion = "slow modes",
) -> DiffusionEmbedding:
    return DiffusionEmbedding(
        coords=np.zeros((n, 0)),
        clusters=np.zeros(n, dtype=np.int64),
        partitions=np.zeros((1, n), dtype=np.int64),
        eigenvalues=np.ones(1) if values is None else values,
        n_clusters=1,
        separation=separation,
        chosen_by=chosen_by,
    )


def _graph(y: np.ndarray, k: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Symmetric affinity matrix of the k-nearest-neighbour graph and its degrees."""
    n = y.shape[0]
    found = nearest_neighbours(y, y, k + 1)
    # Each row's own index is dropped (ties may put it anywhere among equals): keep k others.
    others = np.where(found == np.arange(n)[:, None], -1, found)
    order = np.argsort(others < 0, axis=1, kind="stable")
    nbrs = np.take_along_axis(others, order, axis=1)[:, :k]
    dist = np.linalg.norm(y[:, None, :] - y[nbrs], axis=2)
    scale = np.maximum(dist[:, -1], _SCALE_FLOOR)
    rows = np.repeat(np.arange(n), k)
    cols = nbrs.ravel()
    weight = np.exp(-np.square(dist.ravel()) / (scale[rows] * scale[cols]))
    w = sp.csr_matrix((weight, (rows, cols)), shape=(n, n))
    w = w.maximum(w.T).tocsr()
    degree = np.asarray(w.sum(axis=1)).ravel()
    return w, np.maximum(degree, _SCALE_FLOOR)


def _leading_eigenpairs(
    w: sp.csr_matrix, degree: np.ndarray, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenpairs of D^-1/2 W D^-1/2, eigenvalues descending."""
    inv = sp.diags(1.0 / np.sqrt(degree))
    operator = (inv @ w @ inv).tocsr()
    n = operator.shape[0]
    if n <= _DENSE_LIMIT:
        values, vectors = np.linalg.eigh(operator.toarray())
    else:
        start = np.random.default_rng(seed).standard_normal(n)
        values, vectors = eigsh(operator, k=count, which="LA", v0=start)
    order = np.argsort(-values, kind="stable")[:count]
    return values[order], vectors[:, order]
