"""Fit the heights h of the Brenier potential: the driver shared by every method.

The driver owns what all methods share: the coordinate frame, the cell index, the hierarchical
start (it fits the coarse problem itself, :mod:`solver.fitting.hierarchical`), stopping by
target accuracy / iterations / time (a deadline the methods also check between Monte Carlo
passes or line-search trials), the Monte Carlo estimator (chosen once), the progress callback
and resumable state (which records the config; a resume compares it). Every method
(``exact_newton``, ``newton``, ``adam``) is a :class:`~solver.fitting.methods.FitMethod` of
one shape, called the same way; ``method="auto"`` resolves to the exact method for d = 2, 3
and Monte Carlo Newton otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from solver.cells.index import CellIndex
from solver.estimation.estimator import Estimator, resolve_estimator
from solver.estimation.host import DeadlineReached
from solver.fitting import hierarchical
from solver.fitting.config import (
    FitConfig,
    FitProgress,
    FitResult,
    FitState,
    resolve_method,
)
from solver.fitting.methods import METHODS, FitMethod, MethodContext
from solver.problem import OTProblem

ProgressCallback = Callable[[FitProgress], bool | None]
C = TypeVar("C", bound=MethodContext)


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
    def for_problem(cls, problem: OTProblem, normalised: bool) -> Frame:
        """The normalising frame (Newton, exact), or the identity (the baseline)."""
        d = problem.dim
        if not normalised:
            return cls(np.zeros(d), 1.0)
        y = problem.targets.astype(np.float64)
        centre = problem.weights @ y
        spread = float(np.sqrt(problem.weights @ np.square(y - centre).sum(axis=1)))
        cube_spread = float(np.sqrt(d / 12.0))  # rms radius of a unit-volume cube
        scale = spread / cube_spread if spread > 0 else 1.0
        return cls(centre, scale)

    def to_internal(self, problem: OTProblem) -> OTProblem:
        """The problem with its targets in internal coordinates, float64.

        Exact geometry keeps them; Monte Carlo methods round them to float32, as the cell
        index holds them.
        """
        y = (problem.targets.astype(np.float64) - self.centre) / self.scale
        return replace(problem, targets=y)

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
    method = METHODS[resolve_method(config.method, problem.dim)]
    frame = Frame.for_problem(problem, method.normalised_frame)
    inner = frame.to_internal(problem)
    started = time.perf_counter()
    index = CellIndex(inner.targets, backend=config.backend) if method.uses_index else None
    start = None
    if resume is None and method.hierarchical_start:

        def fit_coarse(coarse: OTProblem, coarse_config: FitConfig) -> np.ndarray:
            # Every rank of a distributed fit fits the lead's coarse problem, within what is
            # left of the fit's time budget.
            coarse = estimator.broadcast(coarse)
            if config.time_budget is not None:
                left = config.time_budget - (time.perf_counter() - started)
                coarse_config = replace(coarse_config, time_budget=max(left, 1e-3))
            return _fit(coarse, coarse_config, estimator, None, None).heights

        start = estimator.broadcast(hierarchical.start_heights(inner, config, fit_coarse))
    ctx = method.make_context(inner, config, index=index, estimator=estimator, start=start)
    if resume is None:  # the start (the hierarchical start's coarse fit) counts as fitting time
        state = method.initial_state(ctx)
        state = replace(state, elapsed=time.perf_counter() - started, config=config)
    else:
        _check_resume(resume, problem, config, method)
        state = replace(resume, config=config)
    state, reason = _iterate(method, ctx, state, config, estimator, frame, callback)
    return FitResult(
        heights=frame.heights_out(state.heights),
        converged=reason == "target",
        reason=reason,
        accuracy=method.final_accuracy(ctx, state),
        iterations=state.iteration,
        elapsed=state.elapsed,
        method=method.name,
        backend=method.name if index is None else index.backend,
        estimator=estimator.name,
        history=state.history,
        state=state,
    )


def _iterate(
    method: FitMethod[C],
    ctx: C,
    state: FitState,
    config: FitConfig,
    estimator: Estimator,
    frame: Frame,
    callback: ProgressCallback | None,
) -> tuple[FitState, str]:
    """Step until a stop reason; returns the final state and the reason."""
    reason = None
    while reason is None:
        if state.iteration >= config.max_iter:
            return state, "max_iter"
        budget_left = None if config.time_budget is None else config.time_budget - state.elapsed
        # Through the estimator: every rank of a distributed fit stops at the same step.
        if estimator.agree(budget_left is not None and budget_left <= 0):
            return state, "time_budget"
        excluded = ctx.excluded_seconds
        start = time.perf_counter()
        # Methods check the deadline inside an iteration too (between Monte Carlo passes and
        # between the batches of a pass): an iteration cut short leaves the state as it was.
        ctx.deadline = None if budget_left is None else start + budget_left
        try:
            state, record, reason = method.step(ctx, state)
        except DeadlineReached:
            spent = time.perf_counter() - start - (ctx.excluded_seconds - excluded)
            return replace(state, elapsed=state.elapsed + spent), "time_budget"
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
    return state, reason


def _check_resume(
    state: FitState, problem: OTProblem, config: FitConfig, method: FitMethod[Any]
) -> None:
    if state.method != method.name:
        raise ValueError(f"state is from method {state.method!r}, config asks {method.name!r}")
    if state.n_targets != problem.n_targets or state.heights.shape != (problem.n_targets,):
        raise ValueError(
            f"state has {state.n_targets} targets, the problem has {problem.n_targets}"
        )
    if state.seed != config.seed:
        raise ValueError(f"state was fitted with seed {state.seed}, config has {config.seed}")
    if state.config is not None:  # states saved before configs were recorded carry none
        changed = config.resume_differences(state.config)
        if changed:
            saved, asked = state.config.to_dict(), config.to_dict()
            detail = ", ".join(f"{name}: {saved[name]!r} -> {asked[name]!r}" for name in changed)
            raise ValueError(f"state was fitted with other settings ({detail})")
