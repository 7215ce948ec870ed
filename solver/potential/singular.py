"""Adjacency of power cells, dihedral angles and the singular set (docs/singular.md).

The Brenier potential u_h(x) = max_i <x, y_i> + h_i is a convex polyhedron whose faces have
normals n_i = (y_i, -1) / |(y_i, -1)|. Where two adjacent faces meet at a large dihedral angle
theta_ij = arccos <n_i, n_j>, the gradient map T jumps between far-apart targets: the facet
W_i cap W_j belongs to the singular set, and the extended map must not interpolate across it.

Angles depend on the coordinates of the latents (a target far from the origin has a nearly
horizontal normal), so they are measured in the ``"standard"`` frame: targets centred on their
mean and scaled to the rms radius of the unit cube, the frame in which
:func:`solver.fitting.driver` works. The paper's raw convention is ``frame="raw"``; its fixed
0.75 rad threshold refers to that.

On real latents the angle alone mixes two things: how far apart y_i and y_j are, and whether
the data has a gap between them. The ``"valley"`` frame (the default of the data-driven rules)
multiplies the standard angle by the pair's valley ratio, how empty the target cloud is at the
pair's midpoint relative to its two ends (:func:`valley_ratios`). Measured with the training
labels as the judge (``bench/singular_quality.py``, ``docs/singular.md``), it ranks
different-label pairs above same-label ones better than the angle alone. The ``"diffusion"``
frame (the default of the data-driven rules) goes further: a pair's score is the distance
of its two targets in diffusion coordinates (:mod:`solver.potential.diffusion`), small when
the data connects them through dense regions and large across an empty one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from solver.cells.index import nearest_neighbours
from solver.estimation.host import MeasureEstimate
from solver.potential.diffusion import (
    SEPARATION_QUORUM,
    DiffusionEmbedding,
    diffusion_distances,
    diffusion_embedding,
    separated_pairs,
)
from solver.potential.threshold import (
    DEFAULT_RULE,
    FALLBACK_QUANTILE,
    ClusterShare,
    FixedThreshold,
    GapThreshold,
    QuantileThreshold,
    ThresholdRule,
)

# How pair angles are measured: "raw" latents (the paper), the "standard" frame (centred,
# cube-scaled), "valley": the standard angle times the pair's valley ratio (see
# :func:`valley_ratios`), or "diffusion": the pair's diffusion distance (not an angle; see
# :mod:`solver.potential.diffusion`).
AngleFrame = Literal["raw", "standard", "valley", "diffusion"]
FRAMES: tuple[AngleFrame, ...] = ("raw", "standard", "valley", "diffusion")

# The paper's fixed threshold for MNIST, Fashion-MNIST and CelebA latents (radians, raw frame).
PAPER_THRESHOLD = 0.75
# The valley frame's density scale: the distance to the 5th nearest target (measured on digits
# latents: ROC AUC of the score for "different digit" 0.950 with 5, 0.950 with 10, 0.946 with
# 20, against 0.929 for the standard angle alone).
VALLEY_NEIGHBOURS = 5
# The midpoint's neighbours are searched among this many nearest targets of each end (see
# :func:`valley_ratios`), and pairs are scored in batches of _VALLEY_BATCH (memory
# O(batch * candidates * d)).
VALLEY_CANDIDATES = 16
_VALLEY_BATCH = 8192
# Angles are floored here before logarithms (radians); distinct targets never come closer.
_ANGLE_FLOOR = 1e-12


@dataclass(frozen=True, kw_only=True)
class Adjacency:
    """Adjacent cell pairs observed by one Monte Carlo pass, or exact (``n_samples = 0``).

    Attributes:
        pairs: cell pairs (i < j) seen as some sample's top-2 cells (exact: sharing a facet of
            positive measure), shape ``(P, 2)``, int64.
        counts: samples whose top-2 cells are {i, j}, shape ``(P,)``, int64 (exact: 0).
        facet_measures: estimates of mu_{d-1}(W_i cap W_j), the facet's (d-1)-volume, shape
            ``(P,)``, float64 (source units^(d-1)); exact when ``n_samples = 0``.
        n_samples: M, the samples of the pass; 0 for the exact diagram.

    """

    pairs: np.ndarray
    counts: np.ndarray
    facet_measures: np.ndarray
    n_samples: int

    def __post_init__(self) -> None:
        p = self.pairs.shape[0] if self.pairs.ndim == 2 else -1
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2:
            raise ValueError(f"pairs must have shape (P, 2), got {self.pairs.shape}")
        if self.counts.shape != (p,) or self.facet_measures.shape != (p,):
            raise ValueError(
                f"counts {self.counts.shape} and facet_measures {self.facet_measures.shape} "
                f"must have shape ({p},)"
            )
        if p and not (self.pairs[:, 0] < self.pairs[:, 1]).all():
            raise ValueError("pairs must be ordered i < j")

    @property
    def n_pairs(self) -> int:
        """Number P of adjacent pairs."""
        return int(self.pairs.shape[0])


def adjacency_from_estimate(est: MeasureEstimate, targets: np.ndarray) -> Adjacency:
    """Adjacency with facet measures from an estimate made with ``k >= 2``.

    Args:
        est: a :func:`solver.estimation.host` result (its ``pairs`` are empty when made with k = 1).
        targets: y, shape ``(N, d)``, the targets the estimate's index was built on.

    Returns:
        The pairs, their top-2 counts and facet measures ``facet_weights * |y_i - y_j|``.

    """
    y = _check_targets(targets)
    if est.pairs.size and int(est.pairs.max()) >= y.shape[0]:
        raise ValueError(
            f"estimate has cell {int(est.pairs.max())} but targets have {y.shape[0]} rows"
        )
    pairs = np.asarray(est.pairs, dtype=np.int64).reshape(-1, 2)
    edge = np.linalg.norm(y[pairs[:, 0]] - y[pairs[:, 1]], axis=1)
    return Adjacency(
        pairs=pairs,
        counts=np.asarray(est.pair_counts, dtype=np.int64),
        facet_measures=np.asarray(est.facet_weights, dtype=np.float64) * edge,
        n_samples=int(est.n_samples),
    )


def dihedral_angles(targets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Dihedral angles theta_ij = arccos <n_i, n_j> with n_i = (y_i, -1) / |(y_i, -1)|.

    Args:
        targets: y, shape ``(N, d)``, in the coordinates the angles are wanted in.
        pairs: index pairs, shape ``(P, 2)``.

    Returns:
        Angles in radians, shape ``(P,)``, float64, in ``[0, pi)``.

    """
    y = _check_targets(targets)
    pairs = _check_pairs(pairs, y.shape[0])
    normals = np.hstack([y, -np.ones((y.shape[0], 1))])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cos = np.einsum("pd,pd->p", normals[pairs[:, 0]], normals[pairs[:, 1]])
    return np.arccos(np.clip(cos, -1.0, 1.0))


def standardise_targets(targets: np.ndarray) -> np.ndarray:
    """Targets centred on their mean and scaled so their rms radius is the unit cube's.

    The unit cube's rms radius is sqrt(d / 12); this is the fit's internal frame (for uniform
    weights), so angles measured here do not depend on where or how large the latents are.

    Args:
        targets: y, shape ``(N, d)``.

    Returns:
        Shape ``(N, d)``, float64.

    """
    y = _check_targets(targets)
    centred = y - y.mean(axis=0)
    spread = float(np.sqrt(np.square(centred).sum(axis=1).mean()))
    cube = math.sqrt(y.shape[1] / 12.0)
    return centred * (cube / spread) if spread > 0 else centred


def frame_angles(
    targets: np.ndarray,
    pairs: np.ndarray,
    frame: AngleFrame,
    *,
    radii: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
) -> np.ndarray:
    """Angle scores of ``pairs`` in the given frame (see :data:`AngleFrame`).

    Args:
        targets: y, shape ``(N, d)``, in the caller's coordinates.
        pairs: index pairs, shape ``(P, 2)``.
        frame: ``"raw"``, ``"standard"``, ``"valley"`` or ``"diffusion"``.
        radii: for the valley frame, :func:`neighbour_radii` of the standardised targets
            (computed when ``None``); ignored by the other frames.
        embedding: for the diffusion frame, the targets' diffusion coordinates, shape
            ``(N, m)`` (computed when ``None``); ignored by the other frames.

    Returns:
        Shape ``(P,)``, float64: radians for ``"raw"`` and ``"standard"``; for ``"valley"``
        the standard angle times the pair's :func:`valley_ratios` (radians, rescaled); for
        ``"diffusion"`` the diffusion distance (unitless).

    """
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {list(FRAMES)}, got {frame!r}")
    if frame == "diffusion":
        y = standardise_targets(targets)
        coords = diffusion_embedding(y).coords if embedding is None else embedding
        if coords.shape[0] != y.shape[0]:
            raise ValueError(f"embedding must have {y.shape[0]} rows, got {coords.shape}")
        return diffusion_distances(coords, _check_pairs(pairs, y.shape[0]))
    if frame == "raw":
        return dihedral_angles(targets, pairs)
    y = standardise_targets(targets)
    angles = dihedral_angles(y, pairs)
    if frame == "standard":
        return angles
    return angles * valley_ratios(y, pairs, radii=radii)


def neighbour_radii(targets: np.ndarray, k: int = VALLEY_NEIGHBOURS) -> np.ndarray:
    """Distance from each target to its k-th nearest other target, shape ``(N,)``, float64.

    Args:
        targets: y, shape ``(N, d)``.
        k: which neighbour (1: the nearest); capped at N - 1.

    """
    y = _check_targets(targets)
    k = min(k, y.shape[0] - 1)
    if k < 1:
        return np.ones(y.shape[0])
    dist = _nearest(y, y, k + 1)  # the first is the target itself
    return dist[:, k]


def valley_ratios(
    targets: np.ndarray,
    pairs: np.ndarray,
    *,
    radii: np.ndarray | None = None,
    k: int = VALLEY_NEIGHBOURS,
) -> np.ndarray:
    """How empty the target cloud is at each pair's midpoint, relative to its two ends.

    r_k(m) / sqrt(r_k(y_i) r_k(y_j)) with m = (y_i + y_j) / 2 and r_k(x) the distance from x
    to its k-th nearest target: about 1 or less when the segment runs inside one dense region,
    large when it bridges a gap between two (the singular set of the Brenier potential lies
    where the target measure's support is not convex). Scale-free.

    r_k(m) is searched among the ``VALLEY_CANDIDATES`` nearest targets of y_i and of y_j (the
    midpoint's neighbours are near its ends), so the cost is one exact search per distinct
    cell plus O(P * VALLEY_CANDIDATES * d), not a search over all N targets per pair. It can
    only over-estimate r_k(m), where the midpoint's true neighbours lie outside both ends'
    neighbourhoods, which is mostly across gaps.

    Args:
        targets: y, shape ``(N, d)``.
        pairs: index pairs, shape ``(P, 2)``.
        radii: :func:`neighbour_radii` of ``targets`` with the same ``k`` (computed when
            ``None``), shape ``(N,)``.
        k: the neighbour rank of the density scale.

    Returns:
        Shape ``(P,)``, float64, positive.

    """
    y = _check_targets(targets)
    pairs = _check_pairs(pairs, y.shape[0])
    radii = neighbour_radii(y, k) if radii is None else np.asarray(radii, dtype=np.float64)
    if radii.shape != (y.shape[0],):
        raise ValueError(f"radii must have shape ({y.shape[0]},), got {radii.shape}")
    if pairs.shape[0] == 0:
        return np.zeros(0)
    k = max(min(k, y.shape[0] - 1), 1)
    cells, slot = np.unique(pairs, return_inverse=True)
    slot = slot.reshape(pairs.shape)
    lists = nearest_neighbours(y, y[cells], min(VALLEY_CANDIDATES + 1, y.shape[0]))
    r_mid = np.empty(pairs.shape[0])
    for lo in range(0, pairs.shape[0], _VALLEY_BATCH):
        hi = min(lo + _VALLEY_BATCH, pairs.shape[0])
        cand = np.sort(np.hstack([lists[slot[lo:hi, 0]], lists[slot[lo:hi, 1]]]), axis=1)
        mid = 0.5 * (y[pairs[lo:hi, 0]] + y[pairs[lo:hi, 1]])
        diff = mid[:, None, :] - y[cand]
        dist = np.sqrt(np.einsum("mcd,mcd->mc", diff, diff))
        dist[:, 1:][cand[:, 1:] == cand[:, :-1]] = np.inf  # each candidate once
        r_mid[lo:hi] = np.partition(dist, k - 1, axis=1)[:, k - 1]
    scale = np.sqrt(radii[pairs[:, 0]] * radii[pairs[:, 1]])
    return r_mid / np.maximum(scale, _ANGLE_FLOOR)


def _nearest(targets: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Distances from each query to its k nearest targets, shape ``(M, k)``, float64, sorted.

    The neighbours come from :func:`nearest_neighbours`; the distances are recomputed in
    float64.
    """
    cells = nearest_neighbours(targets, queries, k)
    diff = queries[:, None, :] - targets[cells]
    return np.sqrt(np.sort(np.einsum("mkd,mkd->mk", diff, diff), axis=1))


@dataclass(frozen=True, kw_only=True)
class SingularSet:
    """Adjacent pairs classified as singular (dihedral angle above a threshold) or regular.

    Attributes:
        pairs: observed adjacent pairs (i < j), shape ``(P, 2)``, int64.
        angles: their dihedral angles in ``frame``, shape ``(P,)``, radians.
        singular: whether each pair's facet is singular (angle > threshold), shape ``(P,)``.
        threshold: the angle threshold in radians (``inf`` when a data-driven rule had too
            few pairs to choose one: then nothing is singular).
        rule: the rule that chose the threshold, with its parameters (a gap rule's fallback
            when the gap was unclear); ``rule.name`` is ``"fixed"``, ``"quantile"``,
            ``"gap"`` or ``"clusters"``.
        frame: how the scores are measured (:data:`AngleFrame`).
        gap_ratio: the ratio of the angles on either side of the largest gap (how clearly
            the singular pairs stand apart), measured for the gap rule and the default choice;
            ``nan`` otherwise.
        reason: how the rule was chosen, in words (e.g. why the default fell back to the
            median).
        radii: for the valley frame, each target's :func:`neighbour_radii` in the standard
            frame, shape ``(N,)``, so that pairs the pass never saw (crossings) are scored
            alike; empty for the other frames.
        embedding: for the diffusion frame, each target's diffusion coordinates, shape
            ``(N, m)``, for the same reason; ``(0, 0)`` for the other frames.
        clusters: the number of spectral clusters of the targets (when the diffusion frame
            or the cluster share was used; :func:`solver.potential.diffusion.count_modes`),
            else 0.

    """

    pairs: np.ndarray
    angles: np.ndarray
    singular: np.ndarray
    threshold: float
    rule: ThresholdRule
    frame: AngleFrame
    gap_ratio: float = math.nan
    reason: str = ""
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
    embedding: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    clusters: int = 0
    _codes: np.ndarray = field(init=False, repr=False, compare=False)
    _order: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pairs = _check_pairs(self.pairs, None)
        if self.angles.shape != (pairs.shape[0],) or self.singular.shape != self.angles.shape:
            raise ValueError(
                f"angles {self.angles.shape} and singular {self.singular.shape} must have "
                f"shape ({pairs.shape[0]},)"
            )
        codes = _pair_codes(pairs[:, 0], pairs[:, 1])
        order = np.argsort(codes, kind="stable")
        object.__setattr__(self, "_codes", codes[order])
        object.__setattr__(self, "_order", order)

    def pair_angles(self, targets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Angles of any ``pairs`` of ``targets`` in this set's frame, shape ``(P,)``.

        Comparable with ``threshold``; the pairs need not be among the observed ones.
        """
        radii = self.radii if self.frame == "valley" and self.radii.size else None
        embedding = self.embedding if self.frame == "diffusion" and len(self.embedding) else None
        return frame_angles(targets, pairs, self.frame, radii=radii, embedding=embedding)

    @property
    def singular_pairs(self) -> np.ndarray:
        """Pairs whose facet is singular, shape ``(S, 2)``, int64."""
        return self.pairs[self.singular]

    @property
    def n_pairs(self) -> int:
        """Number P of observed adjacent pairs."""
        return int(self.pairs.shape[0])

    @property
    def n_singular(self) -> int:
        """Number of singular pairs."""
        return int(np.count_nonzero(self.singular))

    @property
    def n_regular(self) -> int:
        """Number of regular (admissible) pairs."""
        return self.n_pairs - self.n_singular

    def lookup(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Row of each pair {i, j} (either order) in ``pairs``, or -1 when not adjacent.

        Args:
            i: first cell indices, an int array broadcastable with ``j``.
            j: second cell indices.

        Returns:
            int64 array of the broadcast shape.

        """
        i, j = np.broadcast_arrays(np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64))
        if self._codes.size == 0:
            return np.full(i.shape, -1, dtype=np.int64)
        codes = _pair_codes(np.minimum(i, j), np.maximum(i, j))
        pos = np.minimum(np.searchsorted(self._codes, codes), self._codes.size - 1)
        found = (self._codes[pos] == codes) & (i != j)
        return np.where(found, self._order[pos], -1)

    def is_singular(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether {i, j} is an observed adjacent pair with a singular facet (bool)."""
        row = self.lookup(i, j)
        return (row >= 0) & self._flag(row, True)

    def is_admissible(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether {i, j} is observed adjacent and regular: the map may blend y_i and y_j."""
        row = self.lookup(i, j)
        return (row >= 0) & self._flag(row, False)

    def _flag(self, row: np.ndarray, singular: bool) -> np.ndarray:
        """``singular == self.singular[row]`` where row >= 0 (anything elsewhere)."""
        if self.n_pairs == 0:
            return np.zeros(row.shape, dtype=bool)
        return self.singular[np.maximum(row, 0)] == singular


def find_singular_set(
    targets: np.ndarray,
    adjacency: Adjacency,
    rule: ThresholdRule = DEFAULT_RULE,
    *,
    frame: AngleFrame | None = None,
    seed: int = 0,
) -> SingularSet:
    """Classify the observed adjacent pairs by their score in ``frame``.

    A pair is singular when its score is strictly above the threshold ``rule`` chooses (see
    :mod:`solver.potential.threshold`):

    - :class:`FixedThreshold`: its angle (the paper: 0.75 rad for MNIST in its raw latents).
    - :class:`QuantileThreshold`: the ``q`` quantile of the observed scores (numpy's linear
      interpolation), so about ``1 - q`` of the pairs are singular.
    - :class:`GapThreshold`: sort the scores a_1 <= ... <= a_P and take the largest ratio
      a_{k+1} / a_k (the largest gap of log-scores) over splits keeping k >= ceil(min_regular
      * P) pairs regular; the threshold is the geometric midpoint sqrt(a_k a_{k+1}). Log-gaps
      make the rule scale-free, so it finds the jump between within-mode and between-mode
      pairs rather than the spacing of the few largest scores. With a ``fallback``, a gap
      ratio below ``min_ratio`` means no clear gap, and the fallback is used.
    - :class:`ClusterShare`: the ``1 - s`` quantile, s the share of observed pairs whose ends
      lie in different spectral clusters in 3/4 of the k-means starts (:func:`solver.
      potential.diffusion.diffusion_embedding`); with one cluster there is nothing to count, and the
      median is used.

    The default (:data:`DEFAULT_RULE`, diffusion frame) is the gap rule falling back to the
    cluster share: on the 25-Gaussian grid the gap is clear and exact; real latents have no
    clear gap, and there the spectral clusters say how many pairs to flag. Latents without
    cluster structure (one spectral cluster) are scored in the valley frame instead, with
    the median: the previous default.

    Data-driven rules with fewer than 2 pairs choose ``threshold = inf`` (nothing singular).
    ``reason`` says in words which rule chose the threshold and why.

    Args:
        targets: y, shape ``(N, d)``, in the caller's coordinates.
        adjacency: the observed adjacent pairs.
        rule: how to choose the threshold.
        frame: ``"raw"``, ``"standard"`` (centred, cube-scaled targets), ``"valley"``
            (standard angle times valley ratio) or ``"diffusion"`` (diffusion distance);
            ``None``: ``"standard"`` for a fixed threshold (it is in radians); for the
            data-driven rules ``"diffusion"`` when the targets form at least two spectral
            clusters, else ``"valley"`` (no cluster structure to measure distances in).
        seed: drives the spectral clustering (diffusion frame, cluster share).

    Raises:
        ValueError: bad rule, frame or pair indices.

    """
    if not isinstance(rule, FixedThreshold | QuantileThreshold | GapThreshold | ClusterShare):
        raise ValueError(f"rule must be a ThresholdRule, got {rule!r}")
    if frame is not None and frame not in FRAMES:
        raise ValueError(f"frame must be one of {list(FRAMES)}, got {frame!r}")
    standard = standardise_targets(targets)
    spectral: DiffusionEmbedding | None = None
    default_data_driven = frame is None and not isinstance(rule, FixedThreshold)
    if frame == "diffusion" or default_data_driven or _uses_clusters(rule):
        spectral = diffusion_embedding(standard, seed=seed)
    if frame is None:
        frame = _default_frame(rule, spectral)
    radii = neighbour_radii(standard) if frame == "valley" else np.zeros(0)
    embedding = spectral.coords if frame == "diffusion" and spectral else np.zeros((0, 0))
    angles = frame_angles(
        targets,
        adjacency.pairs,
        frame,
        radii=radii,
        embedding=embedding if len(embedding) else None,
    )
    prefix = "default: " if rule == DEFAULT_RULE else ""
    applied: ThresholdRule = rule
    gap_ratio = math.nan
    reason = f"rule {rule.name!r} requested"
    if isinstance(rule, GapThreshold):
        value, gap_ratio = gap_threshold(angles, rule.min_regular)
        if rule.fallback is not None:
            reason = f"{prefix}gap rule, gap ratio {gap_ratio:.3g} >= {rule.min_ratio}"
            if not gap_ratio >= rule.min_ratio:
                applied = rule.fallback
                reason = (
                    f"{prefix}no clear gap in the scores (ratio {gap_ratio:.3g} < "
                    f"{rule.min_ratio}), so {_describe(rule.fallback)}"
                )
    if isinstance(applied, ClusterShare):
        assert spectral is not None  # computed above for every rule that may apply it
        if spectral.n_clusters > 1:
            value, share = cluster_share_threshold(angles, adjacency.pairs, spectral.partitions)
            detail = (
                f"{spectral.describe()} join {100 * share:.1f} % of the pairs in "
                f"{SEPARATION_QUORUM:.0%} of {len(spectral.partitions)} k-means starts"
            )
        else:  # no cluster structure to count: the median, as the rule's own fallback
            applied = QuantileThreshold(q=FALLBACK_QUANTILE)
            detail = "1 spectral cluster, so the median"
        reason = f"{reason}: {detail}" if rule != ClusterShare() else f"{reason}; {detail}"
    if isinstance(applied, FixedThreshold):
        value = float(applied.radians)
    elif isinstance(applied, QuantileThreshold):
        value = float(np.quantile(angles, applied.q)) if angles.size >= 2 else math.inf
    return SingularSet(
        pairs=adjacency.pairs,
        angles=angles,
        singular=angles > value,
        threshold=value,
        rule=applied,
        frame=frame,
        gap_ratio=gap_ratio,
        reason=reason,
        radii=radii,
        embedding=embedding,
        clusters=spectral.n_clusters if spectral else 0,
    )


def cluster_share_threshold(
    scores: np.ndarray, pairs: np.ndarray, clusters: np.ndarray
) -> tuple[float, float]:
    """The threshold flagging the share of pairs that join two clusters, and that share.

    Args:
        scores: one score per pair, shape ``(P,)``.
        pairs: target index pairs, shape ``(P, 2)``.
        clusters: each target's cluster, shape ``(N,)``, or one row per k-means start, shape
            ``(R, N)``: a pair then joins two clusters when the quorum of the rows splits it
            (:func:`solver.potential.diffusion.separated_pairs`).

    Returns:
        ``(threshold, share)``: the ``1 - share`` quantile of ``scores`` (``inf`` when no pair
        joins two clusters or there are fewer than 2 pairs: nothing singular).

    """
    labels = np.atleast_2d(np.asarray(clusters))
    p = _check_pairs(pairs, labels.shape[1])
    if p.shape[0] < 2:
        return math.inf, 0.0
    share = float(np.mean(separated_pairs(p, labels)))
    if share <= 0.0:
        return math.inf, share
    flagged = max(1, round(share * p.shape[0]))
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    top = ordered[-flagged]  # the smallest flagged score; the threshold lies just below it
    if flagged == ordered.size:
        return float(np.nextafter(top, -math.inf)), share
    return float(0.5 * (ordered[-flagged - 1] + top)), share


def _default_frame(rule: ThresholdRule, spectral: DiffusionEmbedding | None) -> AngleFrame:
    """Standard for a fixed angle; diffusion when the targets form clusters, else valley."""
    if isinstance(rule, FixedThreshold):
        return "standard"
    return "diffusion" if spectral is not None and spectral.n_clusters > 1 else "valley"


def _uses_clusters(rule: ThresholdRule) -> bool:
    return isinstance(rule, ClusterShare) or (
        isinstance(rule, GapThreshold) and isinstance(rule.fallback, ClusterShare)
    )


def _describe(rule: ThresholdRule) -> str:
    if isinstance(rule, QuantileThreshold):
        return f"the {rule.q} quantile"
    return "the share of pairs joining different spectral clusters"


def gap_threshold(angles: np.ndarray, min_regular: float) -> tuple[float, float]:
    """Threshold of the gap rule (see :func:`find_singular_set`) and the gap's ratio.

    Args:
        angles: shape ``(P,)``, radians.
        min_regular: share of pairs that must stay at or below the threshold.

    Returns:
        ``(threshold, ratio)``; ``(inf, nan)`` with fewer than 2 angles.

    """
    a = np.sort(np.maximum(np.asarray(angles, dtype=np.float64), _ANGLE_FLOOR))
    if a.size < 2:
        return math.inf, math.nan
    first = min(max(math.ceil(min_regular * a.size), 1), a.size - 1)  # k, 1-based
    log_gaps = np.diff(np.log(a))[first - 1 :]
    k = first - 1 + int(np.argmax(log_gaps))  # 0-based index of a_k
    return float(np.sqrt(a[k] * a[k + 1])), float(a[k + 1] / a[k])


def _pair_codes(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One int64 per unordered pair (cell indices < 2^31)."""
    return (lo.astype(np.int64) << 32) | hi.astype(np.int64)


def _check_targets(targets: np.ndarray) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
        raise ValueError(f"targets must have shape (N, d) with N, d >= 1, got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("targets contain NaN or inf")
    return y


def _check_pairs(pairs: np.ndarray, n: int | None) -> np.ndarray:
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2 or (p.size and not np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"pairs must be an integer array of shape (P, 2), got {p.shape} {p.dtype}")
    p = p.astype(np.int64)
    if p.size and (p.min() < 0 or (n is not None and p.max() >= n)):
        raise ValueError(f"pair indices must be in [0, {n}), got range [{p.min()}, {p.max()}]")
    return p
