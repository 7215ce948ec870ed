"""Settings and outputs of an OT fit: frozen, keyword-only dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from solver.estimation.names import ESTIMATOR_NAMES

if TYPE_CHECKING:  # the estimators load torch; a config only names their report
    from solver.estimation.host import AccuracyReport

Method = Literal["auto", "exact", "newton", "adam"]
# Dimensions in which "auto" fits on the exact power diagram instead of by Monte Carlo (1D
# diagrams of near-duplicate targets at 1e-10 were not robust in a stress test: left to
# Monte Carlo).
EXACT_DIMS = (2, 3)


def resolve_method(method: Method, dim: int) -> Method:
    """The method a fit runs: ``"auto"`` is exact geometry for d = 2, 3, Monte Carlo Newton else."""
    if method == "auto":
        return "exact" if dim in EXACT_DIMS else "newton"
    if method == "exact" and dim not in EXACT_DIMS:
        raise ValueError(f"method 'exact' needs dimension 2 or 3, got {dim}")
    return method


@dataclass(frozen=True, kw_only=True)
class ExactConfig:
    """Damped Newton on the exact power diagram (d = 2, 3; see ``solver.fitting.exact_newton``).

    Attributes:
        start_margin: the Voronoi start maps the targets into the cube shrunk by this fraction
            of its side on every face (inside, so every start cell is non-empty).
        max_backtracks: step halvings of one line search before the fit stops as
            ``"stalled"`` (tight clusters need steps down to ~2^-40 at the start).
    """

    start_margin: float = 0.05
    max_backtracks: int = 60

    def __post_init__(self) -> None:
        if not 0 <= self.start_margin < 0.5:
            raise ValueError(f"start_margin must be in [0, 0.5), got {self.start_margin}")
        if self.max_backtracks < 1:
            raise ValueError(f"max_backtracks must be >= 1, got {self.max_backtracks}")


@dataclass(frozen=True, kw_only=True)
class NewtonConfig:
    """Warm-up then damped Newton with growing sample sets (the default for d = 1 and d > 3).

    Attributes:
        warmup_samples_per_cell: fresh samples per warm-up step, per target cell.
        warmup_lr: Adam step of the warm-up as a fraction of the median top-2 score gap.
        warmup_exit: the warm-up ends when L1 <= this times its noise floor and at most
            ``warmup_max_empty`` of the cells are empty (Newton's rescue step fills those).
        warmup_max_empty: fraction of cells allowed to be empty when the warm-up ends.
        warmup_max_iters: warm-up steps at most.
        samples_per_cell: size of the first Newton stage's sample set, per target cell.
        growth: factor by which each stage's sample set grows until the check size is reached.
        stage_tol: a stage stops when its own L1 is below this fraction of its noise floor.
        max_stage_iters: Newton steps per stage at most.
        max_backtracks: step halvings before a stage gives up and grows its sample set.
        cg_rtol: relative tolerance of the conjugate-gradient Newton solve (inexact Newton).
        reuse_candidates: cells kept per sample of a stage for certified reuse (exact; see
            :mod:`solver.estimation.reuse`); more certify more samples after larger steps.
        coarse_clusters: clusters of the hierarchical start (:mod:`solver.fitting.hierarchical`):
            ``None`` for round(sqrt(N)), 0 for the plain Voronoi start.
    """

    warmup_samples_per_cell: int = 8
    warmup_lr: float = 1.0
    warmup_exit: float = 1.5
    warmup_max_empty: float = 0.005
    warmup_max_iters: int = 300
    samples_per_cell: int = 64
    growth: float = 4.0
    stage_tol: float = 0.3
    max_stage_iters: int = 8
    max_backtracks: int = 8
    cg_rtol: float = 1e-3
    reuse_candidates: int = 4
    coarse_clusters: int | None = None

    def __post_init__(self) -> None:
        if self.coarse_clusters is not None and self.coarse_clusters < 0:
            raise ValueError(f"coarse_clusters must be >= 0 or None, got {self.coarse_clusters}")


@dataclass(frozen=True, kw_only=True)
class AdamConfig:
    """The authors' baseline (pyOMT): Adam without bias correction on a fixed sample set.

    Attributes:
        lr: step size.
        initial_samples: size of the fixed Sobol set; doubled after ``stall_steps`` steps
            without a new best gradient norm.
        stall_steps: steps without improvement before the sample set doubles.
        grad_tol: the baseline's own stopping rule, ||w - v||_2 < grad_tol.
        check_every: steps between independent accuracy checks (their time is excluded
            from the reported elapsed time, in the baseline's favour).
    """

    lr: float = 0.05
    initial_samples: int = 20000
    stall_steps: int = 30
    grad_tol: float = 2e-3
    check_every: int = 50


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """How to fit the heights h.

    Attributes:
        method: ``"auto"`` (default: ``"exact"`` for d = 2, 3, ``"newton"`` otherwise),
            ``"exact"`` (damped Newton on the exact power diagram, d = 2, 3), ``"newton"``
            (Monte Carlo damped Newton) or ``"adam"`` (the baseline).
        target_l1: stop when L1 on an independent sample (exact L1 for ``"exact"``) is at
            most this with no empty cell.
        check_floor: noise floor of the independent check as a fraction of ``target_l1``
            (0.7: a perfect fit measures about 0.7 of the target; smaller floors need
            quadratically more check samples, larger ones a closer fit before the check).
        max_iter: iterations at most (Newton steps or Adam steps).
        time_budget: seconds of fitting at most, or ``None``.
        seed: seeds every sample stream of the fit.
        backend: cell index backend (``"auto"`` picks the best available).
        estimator: Monte Carlo estimator (``"auto"``: distributed when torch.distributed runs
            several ranks, fused on CUDA, else host; see
            :func:`solver.estimation.estimator.resolve_estimator`).
        batch_size: Monte Carlo batch size (bounds memory).
        shard_targets: in a distributed fit (several ranks), split the targets over the ranks
            (each holds N/W of them and its part of the index; queries are merged across
            ranks) instead of giving every rank all of them; ``None`` splits them when they
            take more than :data:`SHARD_BYTES`. Ignored in one process and by ``"exact"``.
        newton: settings of the Newton method.
        adam: settings of the baseline.
        exact: settings of the exact method.
    """

    method: Method = "auto"
    target_l1: float = 0.05
    check_floor: float = 0.7
    max_iter: int = 1000
    time_budget: float | None = None
    seed: int = 0
    backend: str = "auto"
    estimator: str = "auto"
    batch_size: int = 65536
    shard_targets: bool | None = None
    newton: NewtonConfig = field(default_factory=NewtonConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    exact: ExactConfig = field(default_factory=ExactConfig)

    def __post_init__(self) -> None:
        if self.method not in ("auto", "exact", "newton", "adam"):
            raise ValueError(
                f"method must be 'auto', 'exact', 'newton' or 'adam', got {self.method!r}"
            )
        if not 0 < self.target_l1 < 2:
            raise ValueError(f"target_l1 must be in (0, 2), got {self.target_l1}")
        if not 0 < self.check_floor <= 1:
            raise ValueError(f"check_floor must be in (0, 1], got {self.check_floor}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.estimator not in ESTIMATOR_NAMES:
            raise ValueError(f"estimator must be one of {ESTIMATOR_NAMES}, got {self.estimator!r}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget must be > 0, got {self.time_budget}")

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON-ready values (the method settings as nested dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        """Read :meth:`to_dict` output; missing settings (and method sections) take defaults.

        Raises:
            ValueError: unknown settings, or values the config refuses.

        """
        data = dict(data)
        sections = {"newton": NewtonConfig, "adam": AdamConfig, "exact": ExactConfig}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        for name, section in sections.items():
            part = data.pop(name, {})
            names = {f.name for f in fields(section)}
            unknown += [f"{name}.{key}" for key in sorted(set(part) - names)]
            data[name] = section(**{k: v for k, v in part.items() if k in names})
        if unknown:
            raise ValueError(f"unknown fit settings {unknown}")
        return cls(**data)

    def resume_differences(self, other: FitConfig) -> list[str]:
        """Settings that differ from ``other`` and would change a resumed fit's course.

        The stopping limits (``max_iter``, ``time_budget``) and where the work runs
        (``backend``, ``estimator``, ``shard_targets``) may change between a checkpoint and its
        resume; any other setting changes the iterations themselves. With the same backend
        and estimator the resumed fit continues exactly as the uninterrupted one; another
        backend returns the same cells except where float32 rounding decides a near-tie, so
        the continuation agrees to that rounding.
        """
        ours, theirs = self.to_dict(), other.to_dict()
        return [
            name for name in ours if name not in RESUME_FREE_SETTINGS and ours[name] != theirs[name]
        ]


# FitConfig settings a resumed fit may change (see FitConfig.resume_differences).
RESUME_FREE_SETTINGS = frozenset(
    {"max_iter", "time_budget", "backend", "estimator", "shard_targets"}
)
# Float32 targets above this size are split over the ranks of a distributed fit by default
# (FitConfig.shard_targets = None): 1 GiB, N d = 2^28 (4.2 M targets of dimension 64). Below
# it every rank holds them all, which moves less data per query.
SHARD_BYTES = 1 << 30


@dataclass(frozen=True, kw_only=True)
class FitRecord:
    """One iteration of a fit, as kept in the history.

    Attributes:
        iteration: 1-based iteration number.
        elapsed: seconds of fitting so far (checks of the baseline excluded).
        n_samples: size of the sample set that drove this iteration.
        train_l1: L1 of w - v on that sample set (not independent).
        empty_cells: cells without a sample in that set.
        check: independent accuracy check made at this iteration, if any.
    """

    iteration: int
    elapsed: float
    n_samples: int
    train_l1: float
    empty_cells: int = 0
    check: AccuracyReport | None = None


@dataclass(frozen=True, kw_only=True)
class FitState:
    """Everything needed to continue a fit exactly where it stopped.

    Heights are in the fit's internal coordinates (targets centred and scaled, see
    ``scale``); ``arrays`` holds the method's other arrays (Adam moments) and ``counters`` its
    integer/float counters (stage, sample-set size, stall count, ...). ``config`` is the
    :class:`FitConfig` the fit ran with (a resume compares it); ``None`` in states saved
    before configs were recorded.
    """

    method: Method
    heights: np.ndarray
    iteration: int
    elapsed: float
    counters: dict[str, float]
    arrays: dict[str, np.ndarray]
    history: tuple[FitRecord, ...]
    seed: int
    n_targets: int
    config: FitConfig | None = None


@dataclass(frozen=True, kw_only=True)
class FitResult:
    """Output of :func:`solver.fitting.driver.fit`.

    Attributes:
        heights: h in the caller's coordinates, shape ``(N,)``, float64, mean zero; with the
            problem's (merged) targets, ``CellIndex(targets, heights)`` reproduces the cells.
        converged: the target accuracy was reached (independent check).
        reason: why the fit stopped: ``"target"``, ``"max_iter"``, ``"time_budget"``,
            ``"baseline_rule"`` (the baseline's own ||g|| rule), ``"stalled"`` (the exact
            method's line search found no decrease: float64 round-off) or ``"callback"``.
        accuracy: the last independent accuracy check, if any (``"exact"``: the exact accuracy
            of the returned heights).
        iterations: iterations run.
        elapsed: seconds of fitting.
        method: the method used (``"auto"`` resolved).
        backend: the cell index backend used (``"exact"`` for the exact method).
        estimator: the Monte Carlo estimator used (``"host"``, ``"fused"``, ``"distributed"``;
            the exact method draws no samples).
        history: one record per iteration.
        state: the final state (resumable).
    """

    heights: np.ndarray
    converged: bool
    reason: str
    accuracy: AccuracyReport | None
    iterations: int
    elapsed: float
    method: Method
    backend: str
    estimator: str
    history: tuple[FitRecord, ...]
    state: FitState


@dataclass(frozen=True, kw_only=True)
class FitProgress:
    """What a progress callback receives after each iteration.

    Attributes:
        record: this iteration's record.
        state: the resumable state (heights in the fit's internal coordinates).
        target_l1: the fit's target accuracy.
        heights: the state's heights in the caller's coordinates, shape ``(N,)``, mean zero:
            ``CellIndex(problem.targets, heights)`` reproduces the fit's cells.
    """

    record: FitRecord
    state: FitState
    target_l1: float
    heights: np.ndarray
