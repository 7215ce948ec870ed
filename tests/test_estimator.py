"""One estimator interface: the factory's choice, every implementation gives the same pass."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from solver import (
    CellIndex,
    FitConfig,
    FusedEstimator,
    HostEstimator,
    SourceMeasure,
    estimate,
    fit,
    make_problem,
    resolve_estimator,
)


def test_auto_is_host_on_a_cpu_without_a_process_group():
    assert not dist.is_initialized()
    expected = "fused" if torch.cuda.is_available() else "host"
    assert resolve_estimator("auto").name == expected
    assert resolve_estimator("host").name == "host" and resolve_estimator("host").lead
    assert resolve_estimator("fused").name == "fused"


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="estimator must be one of"):
        resolve_estimator("gpu")
    with pytest.raises(ValueError, match="initialised"):
        resolve_estimator("distributed")
    with pytest.raises(ValueError, match="estimator must be one of"):
        FitConfig(estimator="gpu")


@pytest.mark.parametrize("estimator", [HostEstimator(), FusedEstimator()])
def test_every_estimator_gives_the_host_pass(estimator, rng):
    y = (0.3 * rng.standard_normal((50, 3))).astype(np.float32)
    index = CellIndex(y, (0.01 * rng.standard_normal(50)).astype(np.float32), backend="torch")
    source = SourceMeasure(dim=3)
    ref = estimate(index, source, 3000, 4, centres=True, batch_size=1000)
    got = estimator.estimate(index, source, 3000, 4, centres=True, batch_size=1000)
    for field in ("counts", "pairs", "pair_counts", "slab_counts"):
        np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
    np.testing.assert_allclose(got.mass_sums, ref.mass_sums, rtol=1e-12, atol=1e-12)
    assert estimator.agree(True) and not estimator.agree(False)


def test_fit_reports_its_estimator_and_fused_fits_like_host(rng):
    problem = make_problem(rng.uniform(-0.4, 0.4, (24, 4)))
    host = fit(problem, FitConfig(target_l1=0.1, estimator="host", backend="torch"))
    fused = fit(problem, FitConfig(target_l1=0.1, estimator="fused", backend="torch"))
    assert host.estimator == "host" and fused.estimator == "fused"
    assert host.converged and fused.converged
    assert host.accuracy.l1 <= 0.1 and fused.accuracy.l1 <= 0.1
    np.testing.assert_allclose(fused.heights, host.heights, atol=0.02 * np.ptp(host.heights))


class CountingEstimator(HostEstimator):
    """The host estimator, counting its passes."""

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "passes", 0)

    def estimate(self, *args, **kwargs):
        object.__setattr__(self, "passes", self.passes + 1)
        return super().estimate(*args, **kwargs)


def test_a_passed_deadline_stops_newton_inside_its_line_search(rng):
    import dataclasses
    import time

    from solver.fitting import newton

    problem = make_problem(rng.uniform(-0.4, 0.4, (30, 4)))
    config = FitConfig(target_l1=0.01, backend="torch")
    index = CellIndex(problem.targets, backend="torch")
    counter = CountingEstimator()
    ctx = newton.make_context(problem, config, index=index, estimator=counter, start=None)
    start = newton.initial_state(ctx)
    state = dataclasses.replace(start, counters={**start.counters, "phase": 1})
    ctx.deadline = time.perf_counter() - 1.0  # already passed
    new, record, reason = newton.step(ctx, state)
    assert reason == "time_budget" and counter.passes == 1  # no trial step was evaluated
    np.testing.assert_array_equal(new.heights, state.heights)
    assert record.train_l1 > 0.01


def test_search_ahead_gives_the_sequential_results_in_order(rng):
    """The pass searches batch i + 1 while batch i is consumed; results and order unchanged."""
    from solver.estimation.host import searched

    y = rng.standard_normal((40, 3))
    index = CellIndex(y, rng.standard_normal(40))
    batches = [rng.random((n, 3), dtype=np.float32) - 0.5 for n in (7, 100, 1, 64)]
    out = list(searched(index, iter(batches), 2))
    assert [x.shape[0] for x, _, _ in out] == [7, 100, 1, 64]
    for (x, scores, cells), batch in zip(out, batches, strict=True):
        ref_scores, ref_cells = index.search(batch, 2)
        assert x is batch
        np.testing.assert_array_equal(cells, ref_cells)
        np.testing.assert_array_equal(scores, ref_scores)
    assert list(searched(index, iter([]), 2)) == []
    with pytest.raises(ValueError, match="queries must have shape"):  # a search error surfaces
        list(searched(index, iter([batches[0], np.zeros((3, 2), np.float32)]), 2))
