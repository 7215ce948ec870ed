"""Fit the heights h of the Brenier potential: the driver shared by every method.

The driver owns what all methods share: the coordinate frame, the cell index, stopping by
target accuracy / iterations / time (a deadline the methods also check between Monte Carlo
passes or line-search trials), the Monte Carlo estimator (chosen once), the progress callback
and resumable state. Methods (``exact_newton``, ``newton``, ``adam``) supply
``step(ctx, state) -> (state, record, reason)``; ``method="auto"`` resolves to the exact method
for d = 2, 3 and Monte Carlo Newton otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from solver.cells.index import CellIndex
from solver.estimation.estimator import Estimator, resolve_estimator
from solver.fitting import adam, exact_newton, newton
from solver.fitting.config import (
    FitConfig,
    FitProgress,
    FitRecord,
    FitResult,
    FitState,
    resolve_method,
)
from solver.problem import OTProblem

ProgressCallback = Callable[[FitProgress], bool | None]


@dataclass(frozen=True)
class Frame:
    """Internal coordinates y' = (y - centre) / scale; heights map back as h = scale * h'.

    Cells are invariant under this change (the common term <x, centre> drops out of the
    argmax), and the Voronoi start h'_i = -|y'_i|^2/2 then fits the cube whatever the latent
    scale. The baseline runs in the caller's coordinates (identity frame), as the authors' did.
    """

    centre: np.ndarray
    scale: float

    @classmethod
    def for_problem(cls, problem: OTProblem, method: str) -> Frame:
        """Normalising frame for Newton, identity for the baseline."""
        d = problem.dim
        if method == "adam":
            return cls(np.zeros(d), 1.0)
        y = problem.targets.astype(np.float64)
        centre = problem.weights @ y
        spread = float(np.sqrt(problem.weights @ np.square(y - centre).sum(axis=1)))
        cube_spread = float(np.sqrt(d / 12.0))  # rms radius of a unit-volume cube
        scale = spread / cube_spread if spread > 0 else 1.0
        return cls(centre, scale)

    def to_internal(self, y: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """Targets in internal coordinates (float32 for the index, float64 for exact geometry)."""
        return ((y.astype(np.float64) - self.centre) / self.scale).astype(dtype)

    def heights_out(self, h: np.ndarray) -> np.ndarray:
        """Internal heights to the caller's coordinates, mean zero."""
        out = self.scale * np.asarray(h, dtype=np.float64)
        return out - out.mean()


def fit(
    problem: OTProblem,
    config: FitConfig | None = None,
    *,
    callback: ProgressCallback | None = None,
    resume: FitState | None = None,
) -> FitResult:
    """Fit h so that the cells of ``[y_i, h_i]`` carry the target weights.

    Under ``torchrun`` with several ranks (and the default ``estimator="auto"``) this process
    leads a distributed fit: ranks > 0 run :func:`follow_fit`, receive this call's problem,
    config and resume state, and share every Monte Carlo pass; only the lead calls
    ``callback``, and its decision to stop is every rank's.

    Args:
        problem: targets, weights and source measure (see :func:`solver.make_problem`).
        config: method and stopping rules; defaults to ``method="auto"`` (exact geometry for
            d = 2, 3, Monte Carlo damped Newton otherwise) with target L1 0.05.
        callback: called after every iteration with a :class:`FitProgress`; returning
            ``False`` stops the fit (reason ``"callback"``). Save ``progress.state`` with
            :func:`solver.save_state` to make the fit resumable.
        resume: a state from an earlier, interrupted fit with the same problem and config;
            the fit then continues exactly as the uninterrupted one would.

    Returns:
        A :class:`FitResult` with heights in the caller's coordinates.
    """
    config = config or FitConfig()
    estimator = resolve_estimator(config.estimator)
    problem, config, resume = estimator.broadcast((problem, config, resume))
    return _fit(problem, config, estimator, callback, resume)


def follow_fit() -> FitResult | None:
    """On a rank > 0 of a distributed fit: join the lead's next :func:`fit`.

    Returns:
        The fit's result (the same heights as the lead's), or ``None`` when the lead called
        :func:`release_followers` instead of starting another fit.

    Raises:
        ValueError: without an initialised torch.distributed process group.
    """
    estimator = resolve_estimator("distributed")
    job = estimator.broadcast(None)
    if job is None:
        return None
    problem, config, resume = job
    return _fit(problem, config, estimator, None, resume)


def release_followers() -> None:
    """On the lead of a distributed fit: tell the :func:`follow_fit` ranks there is no more fit.

    Does nothing in a single process.
    """
    resolve_estimator("auto").broadcast(None)


def _fit(
    problem: OTProblem,
    config: FitConfig,
    estimator: Estimator,
    callback: ProgressCallback | None,
    resume: FitState | None,
) -> FitResult:
    method = resolve_method(config.method, problem.dim)
    frame = Frame.for_problem(problem, method)
    started = time.perf_counter()
    ctx: newton.NewtonContext | adam.AdamContext | exact_newton.ExactContext
    step: Callable[[FitState], tuple[FitState, FitRecord, str | None]]
    if method == "exact":
        targets = frame.to_internal(problem.targets, np.float64)
        ctx = exact_ctx = exact_newton.make_context(
            targets, problem.weights, problem.source, config
        )
        state = resume or exact_newton.initial_state(exact_ctx)
        step, backend = partial(exact_newton.step, exact_ctx), "exact"
    else:
        targets = frame.to_internal(problem.targets)
        index = CellIndex(targets, backend=config.backend)
        backend = index.backend
        if method == "newton":
            ctx = newton_ctx = newton.make_context(
                targets, problem.weights, problem.source, index, config, estimator=estimator
            )
            state = resume or newton.initial_state(newton_ctx)
            step = partial(newton.step, newton_ctx)
        else:
            ctx = adam_ctx = adam.make_context(
                problem.weights, problem.source, index, config, estimator
            )
            state = resume or adam.initial_state(problem.n_targets, config)
            step = partial(adam.step, adam_ctx)
    if resume is None:  # the start (the hierarchical start's coarse fit) counts as fitting time
        state = replace(state, elapsed=time.perf_counter() - started)
    _check_resume(state, problem, config, method)
    reason = None
    while reason is None:
        if state.iteration >= config.max_iter:
            reason = "max_iter"
            break
        budget_left = None if config.time_budget is None else config.time_budget - state.elapsed
        # Through the estimator: every rank of a distributed fit stops at the same step.
        if estimator.agree(budget_left is not None and budget_left <= 0):
            reason = "time_budget"
            break
        excluded = ctx.excluded_seconds
        start = time.perf_counter()
        # Methods check the deadline inside an iteration too (between Monte Carlo passes).
        ctx.deadline = None if budget_left is None else start + budget_left
        state, record, reason = step(state)
        spent = time.perf_counter() - start - (ctx.excluded_seconds - excluded)
        record = replace(record, elapsed=state.elapsed + spent)
        state = replace(state, elapsed=record.elapsed, history=(*state.history, record))
        stop = False
        if callback is not None and estimator.lead:
            progress = FitProgress(
                record=record,
                state=state,
                target_l1=config.target_l1,
                heights=frame.heights_out(state.heights),
            )
            stop = callback(progress) is False
        if estimator.agree(stop) and reason is None:
            reason = "callback"
    checks = [r.check for r in state.history if r.check is not None]
    last = checks[-1] if checks else None
    if method == "exact" and state.history:
        # Stopped after an accepted step (iterations, callback, budget): the last record
        # describes the heights before it, so measure the returned heights themselves.
        last = exact_newton.final_accuracy(exact_ctx, state)
    return FitResult(
        heights=frame.heights_out(state.heights),
        converged=reason == "target",
        reason=reason,
        accuracy=last,
        iterations=state.iteration,
        elapsed=state.elapsed,
        method=method,
        backend=backend,
        estimator=estimator.name,
        history=state.history,
        state=state,
    )


def _check_resume(state: FitState, problem: OTProblem, config: FitConfig, method: str) -> None:
    if state.method != method:
        raise ValueError(f"state is from method {state.method!r}, config asks {method!r}")
    if state.n_targets != problem.n_targets or state.heights.shape != (problem.n_targets,):
        raise ValueError(
            f"state has {state.n_targets} targets, the problem has {problem.n_targets}"
        )
    if state.seed != config.seed:
        raise ValueError(f"state was fitted with seed {state.seed}, config has {config.seed}")
