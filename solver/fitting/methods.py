"""The fitting methods, one shape each: a frozen :class:`FitMethod` the driver calls the same way.

Every method module (:mod:`~solver.fitting.exact_newton`, :mod:`~solver.fitting.newton`,
:mod:`~solver.fitting.adam`) offers

- ``make_context(problem, config, *, index, estimator, start) -> context``: the problem in the
  fit's internal frame, the settings, the cell index the driver built (``None`` for a method
  that needs none), the Monte Carlo estimator and the starting heights the driver computed
  (``None``: the method's own start);
- ``initial_state(context) -> FitState``;
- ``step(context, state) -> (state, record, stop reason or None)``;

and its :class:`FitMethod` says what the driver prepares for it (frame, index, start) and how
the accuracy of the returned heights is known. :data:`METHODS` holds one per name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from solver.cells.index import CellIndex
from solver.estimation.estimator import Estimator
from solver.estimation.host import AccuracyReport
from solver.estimation.sharded import ShardedIndex
from solver.fitting import adam, exact_newton, newton
from solver.fitting.config import FitConfig, FitRecord, FitState, Method
from solver.problem import OTProblem


class MethodContext(Protocol):
    """What the driver reads and writes on every method's context."""

    deadline: float | None
    """``time.perf_counter`` value after which the method stops (set by the driver)."""
    excluded_seconds: float
    """Seconds the method spent on work excluded from the fit's time (the baseline's checks)."""


C = TypeVar("C", bound=MethodContext)
C_co = TypeVar("C_co", bound=MethodContext, covariant=True)
Step = tuple[FitState, FitRecord, str | None]


class MakeContext(Protocol[C_co]):
    """``make_context`` of a method module (see the module docstring)."""

    def __call__(
        self,
        problem: OTProblem,
        config: FitConfig,
        *,
        index: CellIndex | ShardedIndex | None,
        estimator: Estimator,
        start: np.ndarray | None,
    ) -> C_co:
        """The context of one fit."""


@dataclass(frozen=True, kw_only=True)
class FitMethod(Generic[C]):
    """One fitting method, called by the driver like every other.

    Attributes:
        name: the :data:`~solver.fitting.config.Method` it implements.
        normalised_frame: it runs on centred, cube-scaled targets (else the caller's).
        uses_index: it searches cells by Monte Carlo, on the cell index the driver builds.
        hierarchical_start: it starts from the driver's hierarchical start when the config
            allows one (:func:`solver.fitting.hierarchical.start_heights`).
        make_context: see the module docstring.
        initial_state: the state a fresh fit starts from.
        step: one iteration.
        final_accuracy: the accuracy of a finished fit's heights (``None`` when unknown).

    """

    name: Method
    normalised_frame: bool
    uses_index: bool
    hierarchical_start: bool
    make_context: MakeContext[C]
    initial_state: Callable[[C], FitState]
    step: Callable[[C, FitState], Step]
    final_accuracy: Callable[[C, FitState], AccuracyReport | None]


def last_check(ctx: MethodContext, state: FitState) -> AccuracyReport | None:
    """The last independent accuracy check in the state's history (Monte Carlo methods)."""
    checks = [r.check for r in state.history if r.check is not None]
    return checks[-1] if checks else None


def _exact_accuracy(ctx: exact_newton.ExactContext, state: FitState) -> AccuracyReport | None:
    # A record describes the heights its step began at: after an accepted step, measure the
    # returned heights themselves.
    return exact_newton.final_accuracy(ctx, state) if state.history else None


METHODS: dict[str, FitMethod[Any]] = {
    method.name: method
    for method in (
        FitMethod(
            name="exact",
            normalised_frame=True,
            uses_index=False,
            hierarchical_start=False,
            make_context=exact_newton.make_context,
            initial_state=exact_newton.initial_state,
            step=exact_newton.step,
            final_accuracy=_exact_accuracy,
        ),
        FitMethod(
            name="newton",
            normalised_frame=True,
            uses_index=True,
            hierarchical_start=True,
            make_context=newton.make_context,
            initial_state=newton.initial_state,
            step=newton.step,
            final_accuracy=last_check,
        ),
        FitMethod(
            name="adam",
            normalised_frame=False,
            uses_index=True,
            hierarchical_start=False,
            make_context=adam.make_context,
            initial_state=adam.initial_state,
            step=adam.step,
            final_accuracy=last_check,
        ),
    )
}
