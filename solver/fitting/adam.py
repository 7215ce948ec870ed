"""The authors' baseline (pyOMT): Adam without bias correction on a fixed Sobol set.

Faithful to the reference implementation: m = 0.9 m + 0.1 g, v = 0.999 v + 0.001 g^2,
h <- h - lr m / (sqrt(v) + 1e-8), then h <- h - mean(h); h starts at 0 in the caller's
coordinates; the sample set is fixed (the same stream prefix every step) and doubles after
``stall_steps`` steps without a new best ||g||_2; the method's own rule stops at
||g||_2 < ``grad_tol``. Kept as the reference the default method is measured against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from solver.cells.index import CellIndex
from solver.estimation.estimator import Estimator
from solver.estimation.host import AccuracyReport, accuracy, samples_for_noise_floor
from solver.estimation.sharded import ShardedIndex
from solver.estimation.spec import PassSpec
from solver.fitting.config import FitConfig, FitRecord, FitState
from solver.measures import SourceMeasure
from solver.problem import OTProblem
from solver.seeding import derive_seed


@dataclass
class AdamContext:
    """Fixed inputs of the baseline and the seconds its checks took (excluded from timing).

    ``deadline`` (a ``time.perf_counter`` value or ``None``) is set by the driver; one Adam step
    is one Monte Carlo pass, so the driver's check between steps is enough for the baseline.
    """

    weights: np.ndarray
    source: SourceMeasure
    index: CellIndex | ShardedIndex
    config: FitConfig
    check_samples: int
    estimator: Estimator
    excluded_seconds: float = 0.0
    deadline: float | None = None


def make_context(
    problem: OTProblem,
    config: FitConfig,
    *,
    index: CellIndex | ShardedIndex | None,
    estimator: Estimator,
    start: np.ndarray | None = None,
) -> AdamContext:
    """Bundle the baseline's fixed inputs.

    Args:
        problem: the problem (the baseline runs in the caller's coordinates).
        config: the fit's settings.
        index: the cell index over ``problem.targets``.
        estimator: the Monte Carlo estimator.
        start: not used: the baseline starts from h = 0, as the authors' code does.

    Raises:
        ValueError: without a cell index.

    """
    if index is None:
        raise ValueError("the Adam baseline needs a cell index")
    m_check = samples_for_noise_floor(problem.weights, config.check_floor * config.target_l1)
    return AdamContext(problem.weights, problem.source, index, config, m_check, estimator)


def initial_state(ctx: AdamContext) -> FitState:
    """H = 0, zero moments, the configured initial sample set."""
    n = len(ctx.weights)
    return FitState(
        method="adam",
        heights=np.zeros(n),
        iteration=0,
        elapsed=0.0,
        counters={"n_samples": ctx.config.adam.initial_samples, "stall": 0, "best_gnorm": np.inf},
        arrays={"m": np.zeros(n), "v": np.zeros(n)},
        history=(),
        seed=ctx.config.seed,
        n_targets=n,
    )


def step(ctx: AdamContext, state: FitState) -> tuple[FitState, FitRecord, str | None]:
    """One Adam step on the fixed sample set, with the stall/doubling and stopping rules."""
    cfg = ctx.config.adam
    n_samples = int(state.counters["n_samples"])
    ctx.index.set_heights(state.heights)
    spec = PassSpec(
        source=ctx.source,
        n_samples=n_samples,
        seed=derive_seed(state.seed, 2),
        k=1,
        batch_size=ctx.config.batch_size,
        deadline=ctx.deadline,
    )
    est = ctx.estimator.estimate(ctx.index, spec)
    g = est.cell_measures - ctx.weights
    m = 0.9 * state.arrays["m"] + 0.1 * g
    v = 0.999 * state.arrays["v"] + 0.001 * g * g
    h = state.heights - cfg.lr * m / (np.sqrt(v) + 1e-8)
    h -= h.mean()
    gnorm = float(np.linalg.norm(g))
    best, stall = float(state.counters["best_gnorm"]), int(state.counters["stall"])
    if gnorm <= best:
        best, stall = gnorm, 0
    else:
        stall += 1
    if stall > cfg.stall_steps:
        n_samples, stall, best = 2 * n_samples, 0, np.inf
    iteration = state.iteration + 1
    new = replace(
        state,
        heights=h,
        iteration=iteration,
        arrays={"m": m, "v": v},
        counters={"n_samples": n_samples, "stall": stall, "best_gnorm": best},
    )
    reason = "baseline_rule" if gnorm < cfg.grad_tol else None
    check = None
    if reason is not None or iteration % cfg.check_every == 0:
        check = _timed_check(ctx, h, iteration)
        if check.l1 <= ctx.config.target_l1 and check.empty_cells == 0:
            reason = "target"
    record = FitRecord(
        iteration=iteration,
        elapsed=state.elapsed,
        n_samples=est.n_samples,
        train_l1=float(np.abs(g).sum()),
        empty_cells=int(np.count_nonzero(est.counts == 0)),
        check=check,
    )
    return new, record, reason


def _timed_check(ctx: AdamContext, h: np.ndarray, iteration: int) -> AccuracyReport:
    start = time.perf_counter()
    ctx.index.set_heights(h)
    spec = PassSpec(
        source=ctx.source,
        n_samples=ctx.check_samples,
        seed=derive_seed(ctx.config.seed, 3, iteration),
        k=1,
        batch_size=ctx.config.batch_size,
    )
    est = ctx.estimator.estimate(ctx.index, spec)
    ctx.excluded_seconds += time.perf_counter() - start
    return accuracy(est.counts, est.n_samples, ctx.weights)
