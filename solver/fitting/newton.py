"""The default fit: a first-order warm-up, then damped Newton on growing sample sets.

Phase 1 (warm-up) runs bias-corrected Adam on fresh samples (``warmup_samples_per_cell * N``
per step) in the normalised frame until no cell is empty and the L1 error is near that sample
size's noise floor. Newton needs this: far from the solution thin and empty cells make the
Monte Carlo Hessian a poor model and full steps swallow cells.

Phase 2 (Newton) works in stages. On a stage's fixed sample set S the cell measures w_S(h)
are exact counts; each step solves H d = w_S - v, with H the weighted graph Laplacian of
adjacent cells (facet measure over edge length, estimated from top-2 score gaps, docs/solver.md
section 1) by conjugate gradients, and is damped as in Kitagawa, Merigot and Thibert (2019):
t halves until ||w_S(h - t d) - v||_1 <= (1 - t/2) ||w_S(h) - v||_1 with no new empty cell.
Stages use fresh samples growing by ``growth`` until a stage's noise floor is the one the
stopping rule needs; the first estimate of every full-size stage is made on samples the
heights have never seen, so it is the independent accuracy check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from solver.cells.index import CellIndex
from solver.estimation.estimator import Estimator
from solver.estimation.host import (
    AccuracyReport,
    MeasureEstimate,
    accuracy,
    merge_estimates,
    samples_for_noise_floor,
)
from solver.estimation.reuse import ReuseIndex, entry_bytes
from solver.estimation.sharded import ShardedIndex
from solver.estimation.spec import PassSpec
from solver.fitting.config import FitConfig, FitRecord, FitState
from solver.measures import SourceMeasure
from solver.problem import OTProblem
from solver.seeding import derive_seed

# Cells whose Hessian diagonal is below this fraction of the median get the floor instead:
# thin cells with no slab counts would otherwise get an unbounded Newton step.
_DIAG_FLOOR = 0.05
# Tikhonov ridge relative to the median diagonal; removes the Laplacian's constant null space.
_RIDGE = 1e-6
_RESCUE_CHUNK = 256
_WARMUP, _NEWTON = 0, 1
# First damped-Newton trial step after the warm-up. Measured on N = 10,000, d = 16 clusters:
# t = 1, 1/2, 1/4, 1/8 all failed the KMT test and 1/16 passed (4 wasted passes); t then
# doubles after each accepted step, reaching full steps within a stage.
_FIRST_T = 1.0 / 16
# Stages before the last fitting stage stop once their L1 is below their own noise floor
# (``stage_tol`` applies to the last one): the next stage's fresh samples show an error of
# about that floor anyway. Measured at N = 2,000, d = 16 (2 seeds): 3.0M queries per fit
# against 3.1M with 0.3 (0.6: 3.1M), same checks.
_EARLY_TOL = 1.0
_CHECK_STREAM, _FIT_STREAM, _WARMUP_STREAM = 1, 5, 4
# Bytes of certified-reuse entries a fit keeps (solver.estimation.reuse). A stage of M samples
# keeps K b + 4 bytes each: 0.6 GB for N = 200,000 at target 0.1 (K = 4). When the largest
# stage would not fit with the configured K, the fit keeps 2 candidates (measured on
# N = 10,000, d = 16: a few per cent slower than 4), and past the budget batches are searched
# in full every time: memory stays bounded whatever the target. 512 MiB: at 1 GiB the
# N = 10,000, d = 16 fit to L1 0.01 peaked at 2.84 GB (resident 1.96 GB in its last stage).
_REUSE_BYTES = 1 << 29


@dataclass
class NewtonContext:
    """What the steps share.

    The target weights and source measure, the cell index (the targets in internal
    coordinates; split over ranks in a sharded fit, so the steps reach targets through it), the
    check size M_c and last fitting-stage size M_f, the estimator, the certified-reuse index
    (its entries, keyed by batch, stay for the whole fit), a one-entry estimate cache, the starting
    heights the driver gave (``None``: the Voronoi start) and the driver's deadline (a
    ``time.perf_counter`` value or ``None``).
    """

    weights: np.ndarray
    source: SourceMeasure
    index: CellIndex | ShardedIndex
    config: FitConfig
    check_samples: int
    estimator: Estimator
    reuse: ReuseIndex
    fit_samples: int
    cache: dict[tuple[tuple[tuple[int, int], ...], bytes], MeasureEstimate]
    start: np.ndarray | None = None
    deadline: float | None = None
    excluded_seconds: float = 0.0

    def out_of_time(self) -> bool:
        """Whether the deadline has passed (agreed by every process of the estimator)."""
        late = self.deadline is not None and time.perf_counter() >= self.deadline
        return self.estimator.agree(late)


def make_context(
    problem: OTProblem,
    config: FitConfig,
    *,
    index: CellIndex | ShardedIndex | None,
    estimator: Estimator,
    start: np.ndarray | None = None,
) -> NewtonContext:
    """Bundle the fit's fixed inputs; the check size follows from the target accuracy.

    Args:
        problem: the problem in the fit's internal frame (only its weights and source are
            used: the targets are reached through the index).
        config: the fit's settings.
        index: the cell index over the targets.
        estimator: the Monte Carlo estimator.
        start: starting heights (internal frame, shape ``(N,)``), e.g. the hierarchical start;
            ``None`` for the Voronoi start.

    Raises:
        ValueError: without a cell index.

    """
    if index is None:
        raise ValueError("Monte Carlo Newton needs a cell index")
    weights = problem.weights
    m_check = samples_for_noise_floor(weights, config.check_floor * config.target_l1)
    fit_floor = np.sqrt(1.0 - config.check_floor**2) * config.target_l1
    m_fit = samples_for_noise_floor(weights, float(fit_floor))
    candidates = config.newton.reuse_candidates
    # A failed check's stage fits on M_f + M_c samples (stage_sets).
    largest = (m_fit + m_check) * entry_bytes(index.n_targets, candidates)
    if largest > _REUSE_BYTES:
        candidates = min(candidates, 2)
    reuse = ReuseIndex(index, candidates=candidates, max_bytes=_REUSE_BYTES)
    return NewtonContext(
        weights=weights,
        source=problem.source,
        index=index,
        config=config,
        check_samples=m_check,
        estimator=estimator,
        reuse=reuse,
        fit_samples=m_fit,
        cache={},
        start=start,
    )


def initial_state(ctx: NewtonContext) -> FitState:
    """The starting heights: the driver's (the hierarchical start), or the Voronoi diagram.

    The Voronoi start is h_i = -|y_i|^2 / 2 (normalised targets).
    """
    n = len(ctx.weights)
    if ctx.start is not None:
        h = np.asarray(ctx.start, dtype=np.float64)
    else:
        h = -0.5 * ctx.index.squared_norms()
    return FitState(
        method="newton",
        heights=h - h.mean(),
        iteration=0,
        elapsed=0.0,
        counters={"phase": _WARMUP, "stage": 0, "stage_iter": 0, "t": _FIRST_T / 2},
        arrays={"m": np.zeros(n), "v": np.zeros(n)},
        history=(),
        seed=ctx.config.seed,
        n_targets=n,
    )


def stage_sizes(ctx: NewtonContext) -> list[int]:
    """Sample-set sizes of the fitting stages (before the first check stage).

    Sizes grow by ``growth`` from ``samples_per_cell * N`` up to M_f, the size whose noise
    floor F_f satisfies F_f^2 + F_c^2 = target^2 with F_c = check_floor * target the check's
    floor: heights fitted on M_f samples are off by about F_f on fresh samples and the check
    adds its own independent noise, so a converged fit passes its first check. With the default
    check_floor 0.7 this minimises M_f + M_c (both ~2 (2N / pi) / target^2). Measured at
    N = 2,000, d = 16 (2 seeds): first checks 0.040 and 0.042 for a 0.05 target, 3.1M
    queries per fit against 4.1M with the former check_floor 0.5 and M_f ~ M_c / 2.
    """
    cfg = ctx.config.newton
    sizes: list[int] = []
    size = float(cfg.samples_per_cell * len(ctx.weights))
    while size < ctx.fit_samples:
        sizes.append(int(size))
        size *= cfg.growth
    return [*sizes, ctx.fit_samples]


def stage_size(ctx: NewtonContext, stage: int) -> int:
    """Samples of Newton stage ``stage``: a fitting stage's, or M_c from the first check stage."""
    sizes = stage_sizes(ctx)
    return sizes[stage] if stage < len(sizes) else int(ctx.check_samples)


def stage_seed(ctx: NewtonContext, seed: int, stage: int) -> int:
    """Sample stream of a stage.

    Fitting stages share one stream, so each one's samples start with the previous one's and
    their certified-reuse entries carry over (only the new samples need a full search). Every
    check stage draws a fresh stream the heights have never seen.
    """
    if stage < len(stage_sizes(ctx)):
        return derive_seed(seed, _FIT_STREAM)
    return derive_seed(seed, _CHECK_STREAM, stage)


def stage_sets(ctx: NewtonContext, seed: int, stage: int) -> tuple[tuple[int, int], ...]:
    """The sample sets ``(size, stream)`` a stage's Newton steps fit on.

    A fitting stage fits on its own samples. A check stage whose check failed fits on every
    sample the fit has drawn since its last fitting stage: that stage's M_f, the failed
    check's fresh M_c and those of the checks that failed before it. Each failed check's
    samples were independent of the heights it measured, and the union's noise floor is
    below either set's: heights fitted on M_f + M_c samples are off by F_f / sqrt(2) (with the
    default check_floor), so the next check measures about 0.87 of the target instead of a
    coin flip at the target itself.
    """
    sizes = stage_sizes(ctx)
    if stage < len(sizes):
        return ((sizes[stage], stage_seed(ctx, seed, stage)),)
    fitted = (ctx.fit_samples, stage_seed(ctx, seed, len(sizes) - 1))
    checks = range(len(sizes), stage + 1)
    return (fitted, *((int(ctx.check_samples), stage_seed(ctx, seed, s)) for s in checks))


def step(ctx: NewtonContext, state: FitState) -> tuple[FitState, FitRecord, str | None]:
    """One iteration: a warm-up step or a Newton step; returns state, record, stop reason."""
    if state.counters["phase"] == _WARMUP:
        return _warmup_step(ctx, state)
    return _newton_step(ctx, state)


def _warmup_step(ctx: NewtonContext, state: FitState) -> tuple[FitState, FitRecord, None]:
    cfg = ctx.config.newton
    m = cfg.warmup_samples_per_cell * len(ctx.weights)
    it = state.iteration + 1
    ctx.index.set_heights(state.heights)
    spec = PassSpec(
        source=ctx.source,
        n_samples=m,
        seed=derive_seed(state.seed, _WARMUP_STREAM, it),
        k=2,
        gap_width=np.inf,
        batch_size=ctx.config.batch_size,
        deadline=ctx.deadline,
    )
    est = ctx.estimator.estimate(ctx.index, spec)
    g = est.cell_measures - ctx.weights
    report = accuracy(est.counts, m, ctx.weights)
    done = (
        report.empty_cells <= cfg.warmup_max_empty * len(ctx.weights)
        and report.l1 <= cfg.warmup_exit * report.noise_floor
    )
    counters = dict(state.counters)
    arrays = state.arrays
    h = state.heights
    if done or it >= cfg.warmup_max_iters:
        counters["phase"] = _NEWTON
    else:
        mom = 0.9 * arrays["m"] + 0.1 * g
        var = 0.999 * arrays["v"] + 0.001 * g * g
        step_ = (mom / (1 - 0.9**it)) / (np.sqrt(var / (1 - 0.999**it)) + 1e-12)
        # Adam moves every height by about lr; a fraction of the typical top-2 score gap
        # moves facets by a fraction of a cell, whatever N, d and the latent scale.
        h = h - cfg.warmup_lr * est.median_gap * step_
        h = h - h.mean()
        arrays = {"m": mom, "v": var}
    new = replace(state, heights=h, iteration=it, counters=counters, arrays=arrays)
    return new, _record(state, est, g, None), None


def _newton_step(ctx: NewtonContext, state: FitState) -> tuple[FitState, FitRecord, str | None]:
    stage, stage_iter = int(state.counters["stage"]), int(state.counters["stage_iter"])
    sets = stage_sets(ctx, state.seed, stage)
    h = state.heights
    check: AccuracyReport | None = None
    if stage_iter == 0 and stage >= len(stage_sizes(ctx)):
        # Fresh samples the current heights were not fitted on: an independent check. It needs
        # only each sample's best cell, so it is a top-1 pass on the plain index; only a failed
        # check pays for the top-2 pass (and reuse candidates) that a Newton step needs.
        m, seed = sets[-1]
        first = _check_estimate(ctx, h, m, seed)
        check = accuracy(first.counts, m, ctx.weights)
        if check.l1 <= ctx.config.target_l1 and check.empty_cells == 0:
            g = first.cell_measures - ctx.weights
            return _advance(state, h, stage, stage_iter), _record(state, first, g, check), "target"
    est = _estimate(ctx, h, sets)
    g = est.cell_measures - ctx.weights
    cfg = ctx.config.newton
    if stage_iter >= cfg.max_stage_iters:
        return _advance(state, h, stage + 1, 0), _record(state, est, g, check), None
    empty = np.flatnonzero(est.counts == 0)
    if empty.size:
        h = _rescue_empty(ctx, h, empty, *sets[0])
        return _advance(state, h, stage, stage_iter + 1), _record(state, est, g, check), None
    floor = accuracy(est.counts, est.n_samples, ctx.weights).noise_floor
    tol = cfg.stage_tol if stage >= len(stage_sizes(ctx)) - 1 else _EARLY_TOL
    if np.abs(g).sum() > tol * floor:
        accepted, t = _damped_step(ctx, h, est, g, float(state.counters["t"]), sets)
        if accepted is not None:
            new = _advance(state, accepted, stage, stage_iter + 1, t=t)
            return new, _record(state, est, g, check), None
        if ctx.out_of_time():  # the line search stopped at the deadline: keep h, stop
            return (
                _advance(state, h, stage, stage_iter),
                _record(state, est, g, check),
                "time_budget",
            )
    return _advance(state, h, stage + 1, 0), _record(state, est, g, check), None


def newton_direction(est: MeasureEstimate, g: np.ndarray, rtol: float) -> np.ndarray:
    """Solve H d = g for the Monte Carlo Hessian H, a weighted graph Laplacian, by CG.

    Args:
        est: an estimate with top-2 statistics (``pairs``, ``facet_weights``).
        g: gradient w - v, shape ``(N,)``.
        rtol: CG relative tolerance (inexact Newton).

    Returns:
        d, shape ``(N,)``, mean zero; the Newton step is h - d.
    """
    n = g.shape[0]
    w = est.facet_weights
    keep = w > 0
    i, j, w = est.pairs[keep, 0], est.pairs[keep, 1], w[keep]
    diag = np.bincount(i, weights=w, minlength=n) + np.bincount(j, weights=w, minlength=n)
    scale = float(np.median(diag[diag > 0])) if (diag > 0).any() else 1.0
    diag = np.maximum(diag, _DIAG_FLOOR * scale) + _RIDGE * scale
    off = sp.coo_matrix((-w, (i, j)), shape=(n, n))
    hess = (off + off.T + sp.diags(diag)).tocsr()
    d, _ = spla.cg(hess, g - g.mean(), rtol=rtol, maxiter=500, M=sp.diags(1.0 / diag))
    return d - d.mean()


def _damped_step(
    ctx: NewtonContext,
    h: np.ndarray,
    est: MeasureEstimate,
    g: np.ndarray,
    t_prev: float,
    sets: tuple[tuple[int, int], ...],
) -> tuple[np.ndarray | None, float]:
    """KMT damping: halve t until the L1 error drops by t/2 without a new empty cell.

    Starts at twice the last accepted t (capped at 1), so a fit that needed damping far from
    the solution returns to full Newton steps near it. Returns the heights (or ``None``) and t.
    """
    cfg = ctx.config.newton
    d = newton_direction(est, g, cfg.cg_rtol)
    l1 = float(np.abs(g).sum())
    empty = int(np.count_nonzero(est.counts == 0))
    t = min(1.0, 2.0 * t_prev)
    for _ in range(cfg.max_backtracks):
        if ctx.out_of_time():
            return None, t_prev
        trial = h - t * d
        trial -= trial.mean()
        est_t = _estimate(ctx, trial, sets)
        l1_t = float(np.abs(est_t.cell_measures - ctx.weights).sum())
        if l1_t <= (1.0 - t / 2.0) * l1 and np.count_nonzero(est_t.counts == 0) <= empty:
            return trial, t
        t *= 0.5
    return None, t


def _estimate(
    ctx: NewtonContext, h: np.ndarray, sets: tuple[tuple[int, int], ...]
) -> MeasureEstimate:
    """Top-2 estimate on the union of sample sets ``(size, stream)``; the last one is cached.

    Searches go through the certified-reuse index, so after the first pass over a sample only
    the samples whose cells a height change may have moved are searched again (its entries
    stay across stages: a fitting stage's samples start with the previous one's, and a failed
    check's stage fits on the last fitting stage's samples again). The sets share the first
    one's slab width, so their slab counts add up.
    """
    key = (sets, h.tobytes())
    cached = ctx.cache.get(key)
    if cached is not None:
        return cached
    ctx.reuse.set_heights(h)
    parts: list[MeasureEstimate] = []
    for m, seed in sets:
        width = parts[0].gap_width if parts else None
        spec = PassSpec(
            source=ctx.source,
            n_samples=m,
            seed=seed,
            gap_width=width,
            batch_size=ctx.config.batch_size,
            deadline=ctx.deadline,
        )
        parts.append(ctx.estimator.estimate(ctx.reuse, spec))
    est = merge_estimates(parts)
    ctx.cache.clear()
    ctx.cache[key] = est
    return est


def _check_estimate(ctx: NewtonContext, h: np.ndarray, m: int, seed: int) -> MeasureEstimate:
    """Top-1 cell measures of the first ``m`` samples of stream ``seed`` at heights ``h``.

    A full top-1 search of every sample: about 1.6x cheaper per sample than the top-(K + 1)
    search that fills the certified-reuse entries (CPU kernel, N = 10,000, d = 16).
    """
    ctx.index.set_heights(h)
    spec = PassSpec(
        source=ctx.source,
        n_samples=m,
        seed=seed,
        k=1,
        batch_size=ctx.config.batch_size,
        deadline=ctx.deadline,
    )
    return ctx.estimator.estimate(ctx.index, spec)


def _rescue_empty(
    ctx: NewtonContext, h: np.ndarray, empty: np.ndarray, m: int, seed: int
) -> np.ndarray:
    """Raise each empty cell's height until it wins about its share of the stage's first batch.

    Cell i would win the points x where <x, y_i> + h_i beats the current best score; sorting
    best(x) - <x, y_i> over the batch gives the height at which it wins its first r points,
    r = v_i * batch (at least one). Cells rescued together may share points; the Newton steps
    that follow settle that.
    """
    x = ctx.source.sample(min(m, ctx.config.batch_size), seed, 0)
    ctx.index.set_heights(h)
    best = ctx.index.search(x, 1)[0][:, 0].astype(np.float64)
    xs = x.astype(np.float64)
    h = h.copy()
    for lo in range(0, empty.size, _RESCUE_CHUNK):
        cells = empty[lo : lo + _RESCUE_CHUNK]
        y = ctx.index.rows(cells).astype(np.float64)  # collective in a sharded fit
        need = np.sort(best[:, None] - xs @ y.T, axis=0)
        rank = np.clip(np.round(ctx.weights[cells] * len(x)).astype(int) - 1, 0, len(x) - 2)
        cols = np.arange(cells.size)
        # Midway between the heights at which the cell wins its r-th and (r+1)-th points: it
        # wins r points whatever the score scale. A margin relative to |h| instead swallowed
        # neighbours of near-duplicate targets, whose facets move by dh / |y_i - y_j|.
        h[cells] = 0.5 * (need[rank, cols] + need[rank + 1, cols])
    return h - h.mean()


def _advance(
    state: FitState, h: np.ndarray, stage: int, stage_iter: int, t: float | None = None
) -> FitState:
    counters = dict(state.counters, stage=stage, stage_iter=stage_iter)
    if t is not None:
        counters["t"] = t
    return replace(state, heights=h, iteration=state.iteration + 1, counters=counters)


def _record(
    state: FitState, est: MeasureEstimate, g: np.ndarray, check: AccuracyReport | None
) -> FitRecord:
    return FitRecord(
        iteration=state.iteration + 1,
        elapsed=state.elapsed,
        n_samples=est.n_samples,
        train_l1=float(np.abs(g).sum()),
        empty_cells=int(np.count_nonzero(est.counts == 0)),
        check=check,
    )
