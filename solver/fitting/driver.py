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
from solver.estimation.estimator import Estimator, distributed_world, resolve_estimator
from solver.estimation.host import DeadlineReached
from solver.estimation.sharded import ShardedIndex, shard_bounds
from solver.fitting import hierarchical
from solver.fitting.config import (
    SHARD_BYTES,
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
    if not _sharded(problem, config, estimator):
        problem, config, resume, _ = estimator.broadcast((problem, config, resume, None))
        return _fit(problem, config, estimator, callback, resume)
    # Sharded: the lead moves the targets into the fit's frame and hands each rank its rows
    # only; the O(N) parts of the problem go to every rank.
    method = METHODS[resolve_method(config.method, problem.dim)]
    frame = Frame.for_problem(problem, method.normalised_frame)
    inner = frame.to_internal(problem)
    n, world = problem.n_targets, distributed_world()
    stub = replace(inner, targets=inner.targets[:0])
    estimator.broadcast((stub, config, resume, _Shard(frame=frame, n_targets=n)))
    parts = [inner.targets[slice(*shard_bounds(n, world, r))] for r in range(world)]
    local = replace(stub, targets=estimator.scatter(parts))
    shard = _Shard(frame=frame, n_targets=n, whole=inner)
    return _fit(local, config, estimator, callback, resume, shard)


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
    problem, config, resume, shard = job
    if shard is not None:  # this rank's rows of the targets, in the fit's frame
        problem = replace(problem, targets=estimator.scatter(None))
    return _fit(problem, config, estimator, None, resume, shard)


def release_followers() -> None:
    """On the lead of a distributed fit: tell the :func:`follow_fit` ranks there is no more fit.

    Does nothing in a single process.
    """
    resolve_estimator("auto").broadcast(None)


@dataclass(frozen=True, kw_only=True)
class _Shard:
    """How a sharded fit's problem reaches a rank: the frame, N, and (the lead's) all targets.

    ``whole`` is the lead's problem in the fit's frame with every target (``None`` on the
    other ranks: the hierarchical start, which needs them all, runs on the lead).
    """

    frame: Frame
    n_targets: int
    whole: OTProblem | None = None


def _sharded(problem: OTProblem, config: FitConfig, estimator: Estimator) -> bool:
    """Whether the lead splits the targets over the ranks (see ``FitConfig.shard_targets``)."""
    if (
        estimator.name != "distributed"
        or not METHODS[resolve_method(config.method, problem.dim)].uses_index
    ):
        return False
    if config.shard_targets is not None:
        return config.shard_targets
    return problem.n_targets * problem.dim * 4 > SHARD_BYTES


def _fit(
    problem: OTProblem,
    config: FitConfig,
    estimator: Estimator,
    callback: ProgressCallback | None,
    resume: FitState | None,
    shard: _Shard | None = None,
) -> FitResult:
    """One fit on this process.

    In a sharded fit ``problem`` is this rank's part of it, in the fit's frame already: its
    targets are the rank's rows, its weights all N.
    """
    method = METHODS[resolve_method(config.method, problem.dim)]
    whole: OTProblem | None
    if shard is None:
        frame = Frame.for_problem(problem, method.normalised_frame)
        inner = whole = frame.to_internal(problem)
        n = problem.n_targets
    else:
        frame, inner, whole, n = shard.frame, problem, shard.whole, shard.n_targets
    started = time.perf_counter()
    index: CellIndex | ShardedIndex | None = None
    if method.uses_index:
        if shard is None:
            index = CellIndex(inner.targets, backend=config.backend)
        else:
            index = ShardedIndex(inner.targets, n_targets=n, backend=config.backend)
    start = None
    if resume is None and method.hierarchical_start:

        def fit_coarse(coarse: OTProblem | None, coarse_config: FitConfig | None) -> np.ndarray:
            # Every rank of a distributed fit fits the lead's coarse problem, within what is
            # left of the fit's time budget.
            if coarse_config is not None and coarse_config.time_budget is not None:
                left = coarse_config.time_budget - (time.perf_counter() - started)
                coarse_config = replace(coarse_config, time_budget=max(left, 1e-3))
            coarse, coarse_config = estimator.broadcast((coarse, coarse_config))
            assert coarse is not None and coarse_config is not None  # sent by the lead
            return _fit(coarse, coarse_config, estimator, None, None).heights

        # The lead computes the start (k-means needs every target) and shares it; the other
        # ranks join its coarse fit, if it has one.
        if estimator.lead and whole is not None:
            deadline = None if config.time_budget is None else started + config.time_budget
            start = hierarchical.start_heights(whole, config, fit_coarse, deadline=deadline)
        elif hierarchical.coarse_clusters(n, config):
            fit_coarse(None, None)
        start = estimator.broadcast(start)
    ctx = method.make_context(inner, config, index=index, estimator=estimator, start=start)
    if resume is None:  # the start (the hierarchical start's coarse fit) counts as fitting time
        state = method.initial_state(ctx)
        state = replace(state, elapsed=time.perf_counter() - started, config=config)
    else:
        _check_resume(resume, n, config, method)
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


def _check_resume(state: FitState, n: int, config: FitConfig, method: FitMethod[Any]) -> None:
    if state.method != method.name:
        raise ValueError(f"state is from method {state.method!r}, config asks {method.name!r}")
    if state.n_targets != n or state.heights.shape != (n,):
        raise ValueError(f"state has {state.n_targets} targets, the problem has {n}")
    if state.seed != config.seed:
        raise ValueError(f"state was fitted with seed {state.seed}, config has {config.seed}")
    if state.config is not None:  # states saved before configs were recorded carry none
        changed = config.resume_differences(state.config)
        if changed:
            saved, asked = state.config.to_dict(), config.to_dict()
            detail = ", ".join(f"{name}: {saved[name]!r} -> {asked[name]!r}" for name in changed)
            raise ValueError(f"state was fitted with other settings ({detail})")
