"""Damped Newton on the exact power diagram (d = 2, 3), after Kitagawa, Merigot and Thibert (2019).

In dimension 2 and 3 the cells are computed exactly (:func:`solver.cells.power_diagram
.power_diagram`), so the gradient G(h) = w(h) - v and its Jacobian are exact: DG is the weighted
graph Laplacian with off-diagonal entries -|W_i cap W_j| / |y_i - y_j| over adjacent cells and
rows summing to zero. Each step solves DG d = G with one height fixed (the Laplacian's constant
null space is the gauge h -> h + c), by a sparse LU factorisation (minimum-degree ordering) in
2D and Jacobi-preconditioned conjugate gradients in 3D, and moves h -> h - t d with the KMT
rule: t = 1, 1/2, 1/4, ... (starting from twice the last accepted t) until every cell keeps at
least eps and |G(h - t d)|_2 <= (1 - t/2) |G(h)|_2, where eps is half the smallest of the
target weights and the initial cell measures. Far from the solution the rule keeps every cell
non-empty (so DG stays invertible on the gauge-fixed space); near it full steps are accepted
and the convergence is quadratic, down to float64 round-off.

The start makes every cell non-empty: the Voronoi diagram of the targets mapped affinely into
the cube, written as heights for the unmoved targets. Every iteration's record carries the
exact L1 error as its accuracy check (noise floor 0, no samples).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree

from solver.cells.power_diagram import PowerDiagram, power_diagram
from solver.estimation.host import AccuracyReport
from solver.fitting.config import FitConfig, FitRecord, FitState
from solver.problem import OTProblem

if TYPE_CHECKING:  # the shared signature names them; the exact method uses neither
    from solver.cells.index import CellIndex
    from solver.estimation.estimator import Estimator
    from solver.estimation.sharded import ShardedIndex

# Voronoi start: weights perturbed by up to this fraction of squared nearest-neighbour distances.
_JITTER = 1e-3
# The KMT floor eps on cell measures is set by the first step (from the start's cells).
_UNSET = -1.0
# 3D Newton systems: conjugate gradients to this relative residual, within this many steps.
_CG_RTOL = 1e-10
_CG_MAX_ITER = 2000


@dataclass
class ExactContext:
    """What the steps share: the targets, a diagram cache and the driver's deadline.

    Targets are in internal coordinates (float64); the deadline is in ``time.perf_counter``
    seconds and is checked between line-search trials.
    """

    targets: np.ndarray
    weights: np.ndarray
    low: float
    high: float
    config: FitConfig
    cache: dict[bytes, PowerDiagram]
    deadline: float | None = None
    excluded_seconds: float = 0.0  # nothing is excluded from the exact fit's time


def make_context(
    problem: OTProblem,
    config: FitConfig,
    *,
    index: CellIndex | ShardedIndex | None = None,
    estimator: Estimator | None = None,
    start: np.ndarray | None = None,
) -> ExactContext:
    """Bundle the fit's fixed inputs.

    Args:
        problem: the problem in the fit's internal frame: targets y, shape ``(N, d)``,
            d = 2 or 3 (float64 keeps the exact geometry exact), weights v, and the source
            measure (its cube is the domain).
        config: the fit's settings.
        index: not used (the cells are computed exactly).
        estimator: not used (no samples).
        start: not used (the method starts from its Voronoi start).
    """
    y = np.asarray(problem.targets, dtype=np.float64)
    if y.shape[1] not in (2, 3):
        raise ValueError(f"exact geometry needs dimension 2 or 3, got {y.shape[1]}")
    source, weights = problem.source, np.asarray(problem.weights, np.float64)
    return ExactContext(y, weights, source.low, source.high, config, {})


def initial_state(ctx: ExactContext) -> FitState:
    """Heights whose cells are the Voronoi cells of the targets mapped into the cube.

    With y''_i = a + s y_i inside the cube (s > 0), the Voronoi cell of y''_i is the power
    cell of y_i with h_i = -<a, y_i> - s |y_i|^2 / 2; it contains y''_i, so it is not empty.
    A seeded perturbation of at most 1e-3 s r_i^2 (r_i: distance to the nearest target) keeps
    every y''_i in its cell and breaks the co-sphericity of grids.
    """
    y = ctx.targets
    lo, hi = y.min(axis=0), y.max(axis=0)
    span = float((hi - lo).max())
    side = ctx.high - ctx.low
    s = (1.0 - 2.0 * ctx.config.exact.start_margin) * side / span if span > 0 else 1.0
    a = 0.5 * (ctx.low + ctx.high) - s * 0.5 * (lo + hi)
    h = -(y @ a) - 0.5 * s * np.square(y).sum(axis=1)
    # Grids make the lifted points co-spherical, which Qhull resolves badly: perturb the
    # Voronoi weights by at most 1e-3 of each target's squared nearest-neighbour distance
    # (seeded). Every site stays inside its own cell, so no cell is empty.
    nearest = cKDTree(y).query(y, k=2)[0][:, 1] if len(y) > 1 else np.zeros(len(y))
    rng = np.random.default_rng(ctx.config.seed)
    h += _JITTER * s * np.square(nearest) * rng.uniform(-1.0, 1.0, len(y))
    h -= h.mean()
    return FitState(
        method="exact",
        heights=h,
        iteration=0,
        elapsed=0.0,
        counters={"eps": _UNSET, "t": 0.5},
        arrays={},
        history=(),
        seed=ctx.config.seed,
        n_targets=y.shape[0],
    )


def step(ctx: ExactContext, state: FitState) -> tuple[FitState, FitRecord, str | None]:
    """One damped Newton step; returns the new state, this iteration's record, a stop reason.

    The record describes the heights the step started from (exact L1 as its check). The fit
    stops with ``"target"`` when they meet the target, ``"stalled"`` when no step length
    passes the KMT test (round-off level), ``"time_budget"`` when the budget runs out
    during the line search.
    """
    h = state.heights
    diagram = _diagram(ctx, h)
    g = diagram.cell_measures - ctx.weights
    report = exact_accuracy(diagram.cell_measures, ctx.weights)
    record = FitRecord(
        iteration=state.iteration + 1,
        elapsed=state.elapsed,
        n_samples=0,
        train_l1=report.l1,
        empty_cells=report.empty_cells,
        check=report,
    )
    eps = float(state.counters["eps"])
    if eps == _UNSET:
        eps = 0.5 * min(float(ctx.weights.min()), float(diagram.cell_measures.min()))
    advance = replace(state, iteration=state.iteration + 1, counters=dict(state.counters, eps=eps))
    if report.l1 <= ctx.config.target_l1 and report.empty_cells == 0:
        return advance, record, "target"
    direction = newton_direction(ctx.targets, diagram, g)
    norm = float(np.linalg.norm(g))
    # Twice the last accepted step (at most 1): far from the solution this skips halvings
    # that failed last time; near it full steps return at once.
    t = min(1.0, 2.0 * float(state.counters["t"]))
    for _ in range(ctx.config.exact.max_backtracks):
        if ctx.deadline is not None and time.perf_counter() >= ctx.deadline:
            return advance, record, "time_budget"
        trial = h - t * direction
        trial -= trial.mean()
        try:
            cells = _diagram(ctx, trial).cell_measures
        except RuntimeError:
            # The diagram failed its own mass check (never observed): a rejected trial,
            # not a crash; accepted heights always have a checked diagram.
            t *= 0.5
            continue
        if cells.min() >= eps and np.linalg.norm(cells - ctx.weights) <= (1 - t / 2) * norm:
            counters = dict(advance.counters, t=t)
            return replace(advance, heights=trial, counters=counters), record, None
        t *= 0.5
    return advance, record, "stalled"


def newton_direction(targets: np.ndarray, diagram: PowerDiagram, g: np.ndarray) -> np.ndarray:
    """Solve DG d = g with the exact Hessian (weighted graph Laplacian), gauge d_k = 0.

    Args:
        targets: y, shape ``(N, d)``, the coordinates the heights refer to.
        diagram: the exact diagram at the current heights (all cells non-empty).
        g: gradient w - v, shape ``(N,)``.

    Returns:
        d, shape ``(N,)``; the Newton step is h - d.
    """
    n = g.shape[0]
    if n == 1:
        return np.zeros(1)
    i, j = diagram.pairs[:, 0], diagram.pairs[:, 1]
    w = diagram.facet_measures / np.linalg.norm(targets[i] - targets[j], axis=1)
    diag = np.bincount(i, weights=w, minlength=n) + np.bincount(j, weights=w, minlength=n)
    # Fix the height of the largest cell (its row is the best connected) by doubling its
    # diagonal: the rows of DG sum to zero and so does g, so the solution has d_k = 0 and
    # solves DG d = g, without copying the matrix to drop the row and the column.
    gauge = int(np.argmax(diagram.cell_measures))
    diag[gauge] *= 2.0
    rows = np.concatenate([i, j, np.arange(n)])
    cols = np.concatenate([j, i, np.arange(n)])
    hess = sp.csc_matrix((np.concatenate([-w, -w, diag]), (rows, cols)), shape=(n, n))
    d = None
    if targets.shape[1] == 3:
        # 3D Laplacians fill in badly under elimination (0.47 s of LU against 0.06 s of
        # Jacobi-preconditioned CG at N = 10,000); CG to 1e-10 relative residual, and LU if it
        # has not converged in its cap.
        d, info = spla.cg(
            hess, g, rtol=_CG_RTOL, maxiter=_CG_MAX_ITER, M=sp.diags(1.0 / hess.diagonal())
        )
        if info != 0:
            d = None
    if d is None:
        # A minimum-degree ordering of the symmetric pattern: 1.5 to 2.6 times faster than the
        # default column ordering on these Laplacians (2D N = 100,000, 3D N = 10,000).
        lu = spla.splu(hess, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
        d = lu.solve(g)
    d[gauge] = 0.0
    return d


def exact_accuracy(cell_measures: np.ndarray, weights: np.ndarray) -> AccuracyReport:
    """Accuracy of exact cell measures: L1, max relative error, empty cells; no sample noise.

    Args:
        cell_measures: exact w(h), shape ``(N,)``.
        weights: v, shape ``(N,)``.

    Returns:
        An :class:`AccuracyReport` with ``noise_floor = 0`` and ``n_samples = 0``.
    """
    err = cell_measures - weights
    return AccuracyReport(
        l1=float(np.abs(err).sum()),
        max_rel_error=float(np.max(np.abs(err) / weights)),
        empty_cells=int(np.count_nonzero(cell_measures <= 0)),
        noise_floor=0.0,
        n_samples=0,
    )


def final_accuracy(ctx: ExactContext, state: FitState) -> AccuracyReport:
    """Exact accuracy of the state's heights (a record describes the heights its step began at).

    The diagram of an accepted trial is still cached, so after a step this costs nothing.
    """
    return exact_accuracy(_diagram(ctx, state.heights).cell_measures, ctx.weights)


def _diagram(ctx: ExactContext, h: np.ndarray) -> PowerDiagram:
    """The exact diagram at h; the last one is kept (the accepted trial opens the next step).

    The last diagram, at nearby heights, lends its adjacency and centroids to the next one
    (verified there, speed only).
    """
    key = h.tobytes()
    cached = ctx.cache.get(key)
    if cached is None:
        near = next(iter(ctx.cache.values()), None)
        cached = power_diagram(ctx.targets, h, low=ctx.low, high=ctx.high, near=near)
        ctx.cache.clear()
        ctx.cache[key] = cached
    return cached
