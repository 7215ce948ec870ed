"""Monte Carlo estimates of cell measures, adjacency, facets, mass centres and OT diagnostics.

One streaming pass over M source samples (in bounded batches) gives, from the top-2 cells of
each sample:

- cell measures w_i(h) = #{x in W_i} / M, the gradient w - v of the OT energy;
- the energy term E_mu[u_h(x)] (mean top-1 score), so the convex energy
  F(h) = E_mu[u_h] - <h, v> can be compared between heights on common samples;
- adjacency: pairs (i, j) seen as a sample's top-2, with counts, and the slab counts of samples
  whose score gap is below ``gap_width``, which estimate mu_{d-1}(facet_ij) / |y_i - y_j| (the
  Hessian weights of docs/solver.md);
- optionally mass-centre sums of each cell, and the transport cost 1/2 E|x - T(x)|^2.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from solver.cells.index import CellIndex
from solver.estimation.pairs import PairTable
from solver.estimation.spec import PassSpec
from solver.measures import SourceMeasure

# Fraction of samples whose top-2 score gap falls in the facet slabs when the width is chosen
# from the data: wide enough for many counts per facet, narrow enough that slabs stay near facets.
DEFAULT_SLAB_FRACTION = 0.2


class DeadlineReached(Exception):  # a stop signal, not a fault
    """A Monte Carlo pass stopped between batches because its deadline passed.

    Passes over millions of samples take minutes; the fit's time budget is checked between
    their batches too, and the interrupted pass leaves no result.
    """


def past(deadline: float | None) -> bool:
    """Whether ``deadline`` (a ``time.perf_counter`` value, or ``None`` for none) has passed."""
    return deadline is not None and time.perf_counter() >= deadline


@dataclass(frozen=True, kw_only=True)
class MeasureEstimate:
    """Statistics of one Monte Carlo pass (see module docstring).

    Attributes:
        n_samples: M.
        counts: samples per cell, shape ``(N,)``, int64.
        energy: mean of u_h(x) = top-1 score over the samples.
        transport_cost: 1/2 mean |x - T(x)|^2 (W2^2 / 2 at the optimum).
        pairs: adjacent cell pairs (i < j), shape ``(P, 2)``, int64; empty when k = 1.
        pair_counts: samples whose top-2 cells are {i, j}, shape ``(P,)``, int64.
        slab_counts: of those, samples with score gap < ``gap_width``, shape ``(P,)``, int64.
        gap_width: delta, the slab half-width in score units.
        median_gap: median top-1 minus top-2 score gap (0 when k = 1), a score scale.
        mass_sums: per-cell sums of sample coordinates, shape ``(N, d)``, float64, or ``None``.
    """

    n_samples: int
    counts: np.ndarray
    energy: float
    transport_cost: float
    pairs: np.ndarray
    pair_counts: np.ndarray
    slab_counts: np.ndarray
    gap_width: float
    median_gap: float
    mass_sums: np.ndarray | None

    @property
    def cell_measures(self) -> np.ndarray:
        """w_hat, shape ``(N,)``, float64, summing to 1."""
        return self.counts / self.n_samples

    @property
    def facet_weights(self) -> np.ndarray:
        """Estimates of mu_{d-1}(W_i cap W_j) / |y_i - y_j| per pair, shape ``(P,)``.

        Samples with |s_i - s_j| < delta lie in a slab of width 2 delta / |y_i - y_j| around the
        facet, so slab_count / (2 delta M) estimates facet measure over edge length.
        """
        if self.gap_width <= 0:
            return np.zeros(self.slab_counts.shape)
        return self.slab_counts / (2.0 * self.gap_width * self.n_samples)

    def mass_centres(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Mass centres c_i of the cells and a mask of cells with at least ``min_count`` samples.

        Cells below ``min_count`` get ``nan`` centres instead of a division by zero.

        Returns:
            ``(centres, valid)`` of shapes ``(N, d)`` float64 and ``(N,)`` bool.
        """
        if self.mass_sums is None:
            raise ValueError("this estimate was made without centres=True")
        valid = self.counts >= max(min_count, 1)
        centres = np.full(self.mass_sums.shape, np.nan)
        centres[valid] = self.mass_sums[valid] / self.counts[valid, None]
        return centres, valid


@dataclass(frozen=True, kw_only=True)
class AccuracyReport:
    """How well cell measures w match target weights v (docs/solver.md).

    Attributes:
        l1: sum_i |w_i - v_i|.
        max_rel_error: max_i |w_i / v_i - 1|.
        empty_cells: cells that received no sample.
        noise_floor: expected L1 of a perfect fit measured with this many samples,
            sum_i sqrt(2 v_i / (pi M)); an L1 near it is as good as this sample can tell.
        n_samples: M.
    """

    l1: float
    max_rel_error: float
    empty_cells: int
    noise_floor: float
    n_samples: int


def estimate(index: CellIndex, spec: PassSpec) -> MeasureEstimate:
    """One Monte Carlo pass on the host (numpy statistics): see :class:`PassSpec`.

    Args:
        index: the cell index at the current heights.
        spec: the samples, statistics, batches and deadline of the pass.

    Raises:
        ValueError: the source's dim differs from ``index.dim``.
        DeadlineReached: the deadline passed before the last batch.
    """
    k = spec.k_for(index)
    n, d = index.n_targets, index.dim
    n_samples, gap_width = spec.n_samples, spec.gap_width
    y = index.targets
    counts = np.zeros(n, dtype=np.int64)
    sums = np.zeros((n, d)) if spec.centres else None
    energy = cost = 0.0
    table = PairTable(n, torch.device("cpu"))
    medians: list[float] = []
    batches = spec.source.batches(n_samples, spec.seed, spec.batch_size)
    for x, scores, cells in searched(index, batches, k):
        if past(spec.deadline):
            raise DeadlineReached(f"the deadline passed during a pass of {n_samples} samples")
        top = cells[:, 0]
        counts += np.bincount(top, minlength=n)
        energy += float(scores[:, 0].sum(dtype=np.float64))
        cost += 0.5 * float(np.square(x - y[top], dtype=np.float64).sum())
        if sums is not None:
            for j in range(d):
                sums[:, j] += np.bincount(top, weights=x[:, j], minlength=n)
        if k >= 2:
            gaps = scores[:, 0] - scores[:, 1]
            medians.append(float(np.median(gaps)))
            if gap_width is None:
                gap_width = float(np.quantile(gaps, DEFAULT_SLAB_FRACTION))
            table.add_samples(
                torch.from_numpy(np.ascontiguousarray(top)),
                torch.from_numpy(np.ascontiguousarray(cells[:, 1])),
                torch.from_numpy(gaps < gap_width),
            )
    pairs, pair_counts, slab_counts = table.to_numpy()
    return MeasureEstimate(
        n_samples=n_samples,
        counts=counts,
        energy=energy / n_samples,
        transport_cost=cost / n_samples,
        pairs=pairs,
        pair_counts=pair_counts,
        slab_counts=slab_counts,
        gap_width=float(gap_width or 0.0),
        median_gap=float(np.median(medians)) if medians else 0.0,
        mass_sums=sums,
    )


def merge_estimates(parts: Sequence[MeasureEstimate]) -> MeasureEstimate:
    """One estimate of the union of disjoint sample sets, each measured with one slab width.

    Counts, pair and slab counts and mass sums add up; energy and transport cost are the
    sample-weighted means. ``median_gap`` is the first part's (it sets step sizes only).

    Raises:
        ValueError: no parts, or parts measured with different slab widths.
    """
    if not parts:
        raise ValueError("merge_estimates needs at least one estimate")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if any(p.gap_width != first.gap_width for p in parts):
        raise ValueError(f"slab widths differ: {[p.gap_width for p in parts]}")
    n_cells = first.counts.shape[0]
    total = sum(p.n_samples for p in parts)
    table = PairTable(n_cells, torch.device("cpu"))
    for p in parts:
        codes = torch.from_numpy(p.pairs[:, 0] * n_cells + p.pairs[:, 1])
        table.add_counts(codes, torch.from_numpy(p.pair_counts), torch.from_numpy(p.slab_counts))
    pairs, pair_counts, slab_counts = table.to_numpy()
    sums = [p.mass_sums for p in parts if p.mass_sums is not None]
    return MeasureEstimate(
        n_samples=total,
        counts=sum((p.counts for p in parts[1:]), start=first.counts.copy()),
        energy=sum(p.energy * p.n_samples for p in parts) / total,
        transport_cost=sum(p.transport_cost * p.n_samples for p in parts) / total,
        pairs=pairs,
        pair_counts=pair_counts,
        slab_counts=slab_counts,
        gap_width=first.gap_width,
        median_gap=first.median_gap,
        mass_sums=np.sum(sums, axis=0) if len(sums) == len(parts) else None,
    )


def searched(
    index: CellIndex, batches: Iterable[np.ndarray], k: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(x, scores, cells)`` per batch, the next batch searched while this one is consumed.

    One helper thread runs the searches in order (so the index sees one search at a time, as
    without it); the caller's statistics and the next batch's sampling overlap the search
    instead of leaving the search threads idle. Results are those of searching in sequence.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="search-ahead") as ahead:
        it = iter(batches)
        x = next(it, None)
        if x is None:
            return
        pending = ahead.submit(index.search, x, k)
        for following in it:
            queued = ahead.submit(index.search, following, k)
            scores, cells = pending.result()
            yield x, np.asarray(scores), np.asarray(cells)
            x, pending = following, queued
        scores, cells = pending.result()
        yield x, np.asarray(scores), np.asarray(cells)


def accuracy(counts: np.ndarray, n_samples: int, weights: np.ndarray) -> AccuracyReport:
    """Accuracy of cell measures ``counts / n_samples`` against target weights (shape ``(N,)``)."""
    w = counts / n_samples
    return AccuracyReport(
        l1=float(np.abs(w - weights).sum()),
        max_rel_error=float(np.max(np.abs(w / weights - 1.0))),
        empty_cells=int(np.count_nonzero(counts == 0)),
        noise_floor=float(np.sqrt(2.0 * weights / (math.pi * n_samples)).sum()),
        n_samples=int(n_samples),
    )


def samples_for_noise_floor(weights: np.ndarray, floor: float) -> int:
    """Smallest M whose L1 noise floor sum_i sqrt(2 v_i / (pi M)) is at most ``floor``."""
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    root_sum = float(np.sqrt(2.0 * weights / math.pi).sum())
    return max(1, math.ceil((root_sum / floor) ** 2))


def second_moment(source: SourceMeasure) -> float:
    """E_mu[|x|^2 / 2] in closed form: d/24 on [-1/2, 1/2]^d, d/6 on [0, 1]^d."""
    return source.dim / 24.0 if source.domain == "centered" else source.dim / 6.0


def dual_value(
    est: MeasureEstimate,
    source: SourceMeasure,
    targets: np.ndarray,
    heights: np.ndarray,
    weights: np.ndarray,
) -> float:
    """Kantorovich dual objective for phi = |x|^2/2 - u_h and psi_i = |y_i|^2/2 + h_i.

    Equals W2^2 / 2 at the optimal h and is a lower bound on it otherwise (weak duality), so
    ``transport_cost - dual_value`` shows how far a fit is from optimal, the generator /
    discriminator duality of the paper.
    """
    psi = 0.5 * np.square(targets.astype(np.float64)).sum(axis=1) + heights
    return second_moment(source) - est.energy + float(np.dot(weights, psi))


def kantorovich_potential(index: CellIndex, x: np.ndarray) -> np.ndarray:
    """phi(x) = |x|^2 / 2 - u_h(x) at points x (shape ``(M, d)``); shape ``(M,)``, float64."""
    scores, _ = index.search(np.asarray(x, dtype=np.float32), 1)
    x64 = np.asarray(x, dtype=np.float64)
    return 0.5 * np.square(x64).sum(axis=1) - scores[:, 0].astype(np.float64)
