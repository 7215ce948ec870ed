"""One estimator interface: the factory's choice, every implementation gives the same pass."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from solver import (
    CellIndex,
    FitConfig,
    PassSpec,
    SourceMeasure,
    estimate,
    fit,
    make_problem,
    resolve_estimator,
)
from solver.estimation.estimator import FusedEstimator, HostEstimator


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
    spec = PassSpec(
        source=SourceMeasure(dim=3), n_samples=3000, seed=4, centres=True, batch_size=1000
    )
    ref, got = estimate(index, spec), estimator.estimate(index, spec)
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
    """The host estimator, counting its passes; ``after_pass`` runs after each one."""

    def __init__(self, after_pass=None):
        super().__init__()
        object.__setattr__(self, "passes", 0)
        object.__setattr__(self, "after_pass", after_pass)

    def estimate(self, *args, **kwargs):
        object.__setattr__(self, "passes", self.passes + 1)
        result = super().estimate(*args, **kwargs)
        if self.after_pass is not None:
            self.after_pass()
        return result


def _newton_step_context(rng, estimator):
    import dataclasses

    from solver.fitting import newton

    problem = make_problem(rng.uniform(-0.4, 0.4, (30, 4)))
    config = FitConfig(target_l1=0.01, backend="torch")
    index = CellIndex(problem.targets, backend="torch")
    ctx = newton.make_context(problem, config, index=index, estimator=estimator, start=None)
    start = newton.initial_state(ctx)
    return ctx, dataclasses.replace(start, counters={**start.counters, "phase": 1})


def test_a_deadline_passing_in_the_line_search_stops_newton_there(rng):
    import time

    from solver.fitting import newton

    box = {}

    def expire():  # the deadline passes right after the step's first pass
        box["ctx"].deadline = time.perf_counter() - 1.0

    counter = CountingEstimator(after_pass=expire)
    ctx, state = _newton_step_context(rng, counter)
    box["ctx"] = ctx
    ctx.deadline = time.perf_counter() + 3600.0
    new, record, reason = newton.step(ctx, state)
    assert reason == "time_budget" and counter.passes == 1  # no trial step was evaluated
    np.testing.assert_array_equal(new.heights, state.heights)
    assert record.train_l1 > 0.01


def test_a_deadline_stops_a_pass_between_its_batches(rng):
    """A pass of many batches stops at the first batch after its deadline, with no result."""
    import time

    from solver.estimation.host import DeadlineReached, estimate

    class Slow:
        def __init__(self, index):
            self.index, self.calls = index, 0
            self.n_targets, self.dim, self.targets = index.n_targets, index.dim, index.targets

        def search(self, x, k):
            self.calls += 1
            time.sleep(0.02)
            return self.index.search(x, k)

    slow = Slow(CellIndex(rng.standard_normal((50, 3)), backend="torch"))
    source = SourceMeasure(dim=3)
    deadline = time.perf_counter() + 0.1
    with pytest.raises(DeadlineReached):
        estimate(
            slow,
            PassSpec(source=source, n_samples=100 * 64, seed=1, batch_size=64, deadline=deadline),
        )
    assert 2 <= slow.calls <= 8  # of 100: the pass stopped within a batch or two
    with pytest.raises(DeadlineReached):  # already passed: no batch is counted
        estimate(
            slow,
            PassSpec(
                source=source,
                n_samples=640,
                seed=1,
                batch_size=64,
                deadline=time.perf_counter() - 1,
            ),
        )


def test_a_fit_whose_passes_outlast_its_budget_stops_inside_them(rng):
    """Warm-up passes of 3 x 10^8 samples and 2 s of budget: stopped within the first pass."""
    from solver import NewtonConfig

    problem = make_problem(rng.uniform(-0.4, 0.4, (300, 5)))
    newton = NewtonConfig(warmup_samples_per_cell=1_000_000, coarse_clusters=0)
    config = FitConfig(method="newton", time_budget=2.0, seed=1, newton=newton)
    result = fit(problem, config)
    assert result.reason == "time_budget" and not result.converged
    assert result.iterations == 0 and result.history == ()  # the pass left no record
    assert 2.0 <= result.elapsed < 120.0  # the pass alone takes over 20 minutes here
    assert result.state.config == config


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


def test_merged_estimates_add_up_their_samples(rng):
    from solver.estimation.host import merge_estimates

    index = CellIndex(rng.standard_normal((30, 3)) * 0.3, backend="torch")
    source = SourceMeasure(dim=3)
    a = estimate(
        index,
        PassSpec(
            source=source, n_samples=3000, seed=1, gap_width=0.02, centres=True, batch_size=700
        ),
    )
    b = estimate(
        index,
        PassSpec(
            source=source, n_samples=5000, seed=2, gap_width=0.02, centres=True, batch_size=700
        ),
    )
    both = merge_estimates([a, b])
    assert both.n_samples == 8000 and both.gap_width == 0.02
    np.testing.assert_array_equal(both.counts, a.counts + b.counts)
    np.testing.assert_allclose(both.mass_sums, a.mass_sums + b.mass_sums)
    assert both.energy == pytest.approx((3000 * a.energy + 5000 * b.energy) / 8000)
    pairs = {}
    for est in (a, b):
        for (i, j), total, slab in zip(est.pairs, est.pair_counts, est.slab_counts, strict=True):
            old = pairs.get((i, j), (0, 0))
            pairs[(i, j)] = (old[0] + total, old[1] + slab)
    assert {tuple(p) for p in both.pairs} == set(pairs)
    for (i, j), total, slab in zip(both.pairs, both.pair_counts, both.slab_counts, strict=True):
        assert pairs[(i, j)] == (total, slab)
    assert np.abs(both.facet_weights).sum() > 0
    other = estimate(index, PassSpec(source=source, n_samples=1000, seed=3, gap_width=0.05))
    with pytest.raises(ValueError, match="slab widths"):
        merge_estimates([a, other])
    assert merge_estimates([a]) is a
