"""Damped Newton on the Monte Carlo OT energy, with growing sample sets (the default method).

On a fixed sample set S of size M the empirical energy
F_S(h) = mean_{x in S} u_h(x) - <h, v> is exactly convex, with gradient w_S(h) - v. Each stage
minimises F_S by Newton steps: the Hessian is the weighted graph Laplacian of adjacent cells
(facet measure over edge length, estimated from the top-2 score gaps, DESIGN.md section 1),
solved by conjugate gradients, and the step is damped by Armijo backtracking on F_S itself
(common random numbers, so the comparison is exact). Stages use fresh samples, growing by
``growth`` until the noise floor of a stage is the one the stopping check needs; the first
estimate of every full-size stage is made on samples the heights have never seen, so it is
the independent accuracy check.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from solver.config import FitConfig, FitRecord, FitState
from solver.estimate import MeasureEstimate, accuracy, estimate, samples_for_noise_floor
from solver.index import CellIndex
from solver.measures import SourceMeasure
from solver.seeding import derive_seed

# Cells whose Hessian diagonal is below this fraction of the median get the floor instead:
# thin cells with no slab counts would otherwise get an unbounded Newton step.
_DIAG_FLOOR = 0.05
# Tikhonov ridge relative to the median diagonal; removes the Laplacian's constant null space.
_RIDGE = 1e-6
_LEGENDRE_CHUNK = 256
# Samples of the starting sets (8 per cell, at most this many).
_INIT_SAMPLES = 1 << 18
# Levenberg-Marquardt schedule: start as a scaled gradient step, relax towards pure Newton
# after each accepted step, stiffen after each rejected trial.
_DAMPING_START = 1.0
_DAMPING_MIN = 1e-4
_DAMPING_DOWN = 4.0
_DAMPING_UP = 8.0


@dataclass
class NewtonContext:
    """What the Newton steps share: the problem in internal coordinates and a cache."""

    targets: np.ndarray
    weights: np.ndarray
    source: SourceMeasure
    index: CellIndex
    config: FitConfig
    check_samples: int
    cache: dict[tuple[int, bytes], MeasureEstimate]


def initial_state(ctx: NewtonContext) -> FitState:
    """Start where every cell holds a sample: h_i = min_x (|x|^2/2 - <x, y_i>) over samples x.

    This is the Legendre transform of u(x) = |x|^2/2 restricted to a sample set: the cells of
    targets inside the cube are their Voronoi cells, and a target outside keeps the cell
    around its nearest sample instead of an empty one.
    """
    config = ctx.config
    x = ctx.source.sample(min(_INIT_SAMPLES, 8 * len(ctx.weights)), derive_seed(config.seed, 0))
    h = legendre_heights(ctx.targets, x, 0.5 * np.square(x.astype(np.float64)).sum(axis=1))
    targets = ctx.targets
    return FitState(
        method="newton", heights=h - h.mean(), iteration=0, elapsed=0.0,
        counters={"stage": 0, "stage_iter": 0, "damping": _DAMPING_START}, arrays={}, history=(), seed=config.seed,
        n_targets=targets.shape[0],
    )


def legendre_heights(targets: np.ndarray, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """h_i = min over sample points x of u(x) - <x, y_i>, the discrete Legendre transform.

    With these heights max_i <x, y_i> + h_i <= u(x) at every sample, with equality at each
    target's minimiser, so every cell holds at least one sample (ties aside).

    Args:
        targets: y, shape ``(N, d)``.
        x: sample points, shape ``(M, d)``.
        u: a convex potential's values at x, shape ``(M,)``.
    """
    xs = x.astype(np.float64)
    out = np.empty(targets.shape[0])
    for lo in range(0, targets.shape[0], _LEGENDRE_CHUNK):
        ys = targets[lo : lo + _LEGENDRE_CHUNK].astype(np.float64)
        out[lo : lo + _LEGENDRE_CHUNK] = np.min(u[:, None] - xs @ ys.T, axis=0)
    return out


def make_context(
    targets: np.ndarray, weights: np.ndarray, source: SourceMeasure, index: CellIndex,
    config: FitConfig,
) -> NewtonContext:
    """Bundle the fit's fixed inputs; the check size follows from the target accuracy."""
    m_check = samples_for_noise_floor(weights, config.check_floor * config.target_l1)
    return NewtonContext(targets, weights, source, index, config, m_check, {})


def stage_size(ctx: NewtonContext, stage: int) -> int:
    """Samples of stage ``stage``: ``samples_per_cell * N * growth^stage``, capped at the check size."""
    cfg = ctx.config.newton
    first = cfg.samples_per_cell * len(ctx.weights)
    return int(min(first * cfg.growth**stage, ctx.check_samples))


def step(ctx: NewtonContext, state: FitState) -> tuple[FitState, FitRecord, str | None]:
    """One Newton iteration (or a stage change); returns the new state, its record, a stop reason."""
    stage, stage_iter = int(state.counters["stage"]), int(state.counters["stage_iter"])
    damping = float(state.counters["damping"])
    m = stage_size(ctx, stage)
    seed = derive_seed(state.seed, 1, stage)
    h = state.heights
    est = _estimate(ctx, h, m, seed, stage)
    g = est.cell_measures - ctx.weights
    check = None
    if stage_iter == 0 and m >= ctx.check_samples:
        # Fresh samples the current heights were not fitted on: an independent check.
        check = accuracy(est.counts, m, ctx.weights)
        if check.l1 <= ctx.config.target_l1 and check.empty_cells == 0:
            done = _advance(state, h, stage, stage_iter, damping)
            return done, _record(state, m, g, check), "target"
    floor = accuracy(est.counts, m, ctx.weights).noise_floor
    done_stage = np.abs(g).sum() <= ctx.config.newton.stage_tol * floor
    if not done_stage and stage_iter < ctx.config.newton.max_stage_iters:
        accepted, damping = _damped_step(ctx, h, est, g, damping, m, seed, stage)
        if accepted is not None:
            new = _advance(state, accepted, stage, stage_iter + 1, damping)
            return new, _record(state, m, g, check), None
    return _advance(state, h, stage + 1, 0, damping), _record(state, m, g, check), None


def newton_direction(
    est: MeasureEstimate, g: np.ndarray, rtol: float, damping: float = 0.0
) -> np.ndarray:
    """Solve (H + damping * median(diag H) * I) d = g for the Monte Carlo Hessian H by CG.

    H is the weighted graph Laplacian of adjacent cells; the Levenberg-Marquardt damping
    blends the Newton step into a scaled gradient step where the Hessian estimate is poor
    (thin cells, few slab samples).

    Args:
        est: an estimate with top-2 statistics (``pairs``, ``facet_weights``).
        g: gradient w - v, shape ``(N,)``.
        rtol: CG relative tolerance.
        damping: Levenberg-Marquardt parameter (0 for the pure Newton step).

    Returns:
        d, shape ``(N,)``, mean zero; the Newton step is h - d.
    """
    n = g.shape[0]
    w = est.facet_weights
    keep = w > 0
    i, j, w = est.pairs[keep, 0], est.pairs[keep, 1], w[keep]
    diag = np.bincount(i, weights=w, minlength=n) + np.bincount(j, weights=w, minlength=n)
    scale = float(np.median(diag[diag > 0])) if (diag > 0).any() else 1.0
    diag = np.maximum(diag, _DIAG_FLOOR * scale) + (_RIDGE + damping) * scale
    off = sp.coo_matrix((-w, (i, j)), shape=(n, n))
    hess = (off + off.T + sp.diags(diag)).tocsr()
    precond = sp.diags(1.0 / diag)
    d, _ = spla.cg(hess, g - g.mean(), rtol=rtol, maxiter=500, M=precond)
    return d - d.mean()


def _damped_step(
    ctx: NewtonContext, h: np.ndarray, est: MeasureEstimate, g: np.ndarray, damping: float,
    m: int, seed: int, stage: int,
) -> tuple[np.ndarray | None, float]:
    """Damped Newton step in the manner of Kitagawa, Merigot and Thibert.

    Halve t until ||g(h - t d)||_1 <= (1 - t/2) ||g(h)||_1 on the stage's samples without
    emptying a cell that had samples. Returns the accepted heights (or ``None``) and t.
    """
    cfg = ctx.config.newton
    d = newton_direction(est, g, cfg.cg_rtol)
    l1 = float(np.abs(g).sum())
    empty = int(np.count_nonzero(est.counts == 0))
    t = min(1.0, 2.0 * damping)
    for _ in range(cfg.max_backtracks):
        trial = h - t * d
        trial -= trial.mean()
        est_t = _estimate(ctx, trial, m, seed, stage)
        l1_t = float(np.abs(est_t.cell_measures - ctx.weights).sum())
        if l1_t <= (1.0 - t / 2.0) * l1 and np.count_nonzero(est_t.counts == 0) <= empty:
            return trial, t
        t *= 0.5
    return None, t


def _estimate(
    ctx: NewtonContext, h: np.ndarray, m: int, seed: int, stage: int
) -> MeasureEstimate:
    key = (stage, h.tobytes())
    cached = ctx.cache.get(key)
    if cached is not None:
        return cached
    ctx.index.set_heights(h)
    est = estimate(ctx.index, ctx.source, m, seed, k=2, batch_size=ctx.config.batch_size)
    ctx.cache.clear()  # the last estimate is all a step can reuse
    ctx.cache[key] = est
    return est


def _rescue_empty(
    ctx: NewtonContext, h: np.ndarray, empty: np.ndarray, m: int, seed: int
) -> np.ndarray:
    """Raise each empty cell's height just enough to win one point of the stage's first batch."""
    x = ctx.source.sample(min(m, ctx.config.batch_size), seed, 0)
    ctx.index.set_heights(h)
    best = ctx.index.search(x, 1)[0][:, 0].astype(np.float64)
    h = h.copy()
    for lo in range(0, empty.size, _RESCUE_CHUNK):
        cells = empty[lo : lo + _RESCUE_CHUNK]
        reach = x.astype(np.float64) @ ctx.targets[cells].astype(np.float64).T  # (B, c)
        need = np.min(best[:, None] - reach, axis=0)  # height at which the cell ties
        margin = 1e-3 * np.maximum(np.abs(need), 1e-3)
        h[cells] = need + margin
    return h - h.mean()


def _advance(
    state: FitState, h: np.ndarray, stage: int, stage_iter: int, damping: float
) -> FitState:
    return replace(
        state, heights=h, iteration=state.iteration + 1,
        counters={"stage": stage, "stage_iter": stage_iter, "damping": damping},
    )


def _record(state: FitState, m: int, g: np.ndarray, check) -> FitRecord:  # noqa: ANN001
    return FitRecord(
        iteration=state.iteration + 1, elapsed=state.elapsed, n_samples=m,
        train_l1=float(np.abs(g).sum()), check=check,
    )
