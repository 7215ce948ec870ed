"""Damped Newton on the exact power diagram: accuracy to 1e-8, degenerate inputs, the driver."""

import dataclasses

import numpy as np
import pytest
from oracles import halfspace_cells, laguerre_areas

from solver import FitConfig, build_extended_map, fit, load_state, make_problem, save_state
from solver.cells.power_diagram import power_diagram

TARGET = 1e-8


def clustered(rng, n, d, centres=4, spread=0.05):
    c = rng.uniform(-3.0, 3.0, (centres, d))
    return c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))


def assert_exact_fit(problem, result, oracle=laguerre_areas):
    """The fit says it met 1e-8 exactly, and an independent oracle agrees in caller coordinates."""
    assert result.method == "exact" and result.reason == "target" and result.converged
    acc = result.accuracy
    assert acc.l1 <= TARGET and acc.empty_cells == 0
    assert acc.noise_floor == 0.0 and acc.n_samples == 0
    cells = oracle(problem.targets, result.heights, low=problem.source.low)
    if isinstance(cells, tuple):
        cells = cells[0]
    assert np.abs(cells - problem.weights).sum() <= 2 * TARGET


def test_auto_is_exact_in_2d_and_meets_1e8(rng):
    problem = make_problem(rng.uniform(-1, 1, (64, 2)))
    result = fit(problem, FitConfig(target_l1=TARGET))
    assert_exact_fit(problem, result)
    assert result.backend == "exact" and result.iterations <= 12


def test_clustered_targets_with_non_uniform_weights_in_the_unit_square(rng):
    y = clustered(rng, 80, 2)
    v = rng.uniform(0.2, 3.0, 80)
    problem = make_problem(y, v / v.sum(), domain="unit")
    assert_exact_fit(problem, fit(problem, FitConfig(target_l1=TARGET)))


def test_three_dimensions_non_uniform_weights(rng):
    v = rng.uniform(0.5, 2.0, 30)
    problem = make_problem(clustered(rng, 30, 3), v / v.sum())
    assert_exact_fit(problem, fit(problem, FitConfig(target_l1=TARGET)), oracle=halfspace_cells)


def test_degenerate_targets_colinear_2d_and_coplanar_3d(rng):
    t = rng.uniform(-1, 1, 12)
    problem = make_problem(np.stack([t, 2 * t + 0.5], axis=1))
    assert_exact_fit(problem, fit(problem, FitConfig(target_l1=TARGET)))
    uv = rng.uniform(-1, 1, (20, 2))
    problem = make_problem(np.c_[uv, uv[:, 0] - uv[:, 1]])
    assert_exact_fit(problem, fit(problem, FitConfig(target_l1=TARGET)), oracle=halfspace_cells)


def test_near_duplicate_targets(rng):
    y = rng.uniform(-1, 1, (30, 2))
    y[1] = y[0] + 1e-6
    y[2] = y[0] - 1e-6
    problem = make_problem(y)
    assert_exact_fit(problem, fit(problem, FitConfig(target_l1=TARGET)))


def test_exact_and_monte_carlo_fits_agree_within_the_noise(rng):
    problem = make_problem(clustered(rng, 48, 2, spread=0.5))
    exact = fit(problem, FitConfig(target_l1=TARGET))
    mc = fit(problem, FitConfig(method="newton", target_l1=0.02, seed=2))
    assert mc.method == "newton" and mc.converged
    # The Monte Carlo heights measured exactly are as good as the Monte Carlo check said...
    areas = power_diagram(problem.targets, mc.heights).cell_measures
    assert np.abs(areas - problem.weights).sum() <= 0.02
    # ...and its heights are the exact ones up to that noise: a height error dh moves facets
    # by dh / |y_i - y_j|, so dh stays a small fraction of the typical score gap.
    spread = float(np.ptp(exact.heights))
    assert np.abs(mc.heights - exact.heights).max() <= 5e-3 * spread  # measured 3e-4..5e-4


def test_extended_map_takes_exact_adjacency_and_centres(rng):
    problem = make_problem(clustered(rng, 40, 2, spread=0.5))
    heights = fit(problem, FitConfig(target_l1=TARGET)).heights
    ext = build_extended_map(problem.targets, heights, n_samples=1, seed=0)
    diagram = power_diagram(problem.targets, heights)
    assert ext.adjacency.n_samples == 0
    np.testing.assert_array_equal(ext.adjacency.pairs, diagram.pairs)
    np.testing.assert_allclose(ext.adjacency.facet_measures, diagram.facet_measures)
    np.testing.assert_allclose(ext.mass_centres, diagram.centroids)
    assert ext.has_centre.all()
    _, oracle_centres = halfspace_cells(problem.targets, heights)
    np.testing.assert_allclose(ext.mass_centres, oracle_centres, atol=1e-9)


def test_resume_from_checkpoint_equals_uninterrupted(rng, tmp_path):
    problem = make_problem(clustered(rng, 60, 2, spread=0.5))
    config = FitConfig(target_l1=1e-12, seed=3)
    whole = fit(problem, config)
    part = fit(problem, dataclasses.replace(config, max_iter=3))
    assert part.reason == "max_iter" and part.state.method == "exact"
    save_state(tmp_path / "state.npz", part.state)
    resumed = fit(problem, config, resume=load_state(tmp_path / "state.npz"))
    np.testing.assert_array_equal(resumed.heights, whole.heights)
    assert [r.train_l1 for r in resumed.history] == [r.train_l1 for r in whole.history]


def test_callback_sees_exact_checks_and_can_stop(rng):
    seen = []

    def callback(progress):
        seen.append(progress.record.check)
        return len(seen) < 2

    result = fit(make_problem(clustered(rng, 40, 2)), FitConfig(target_l1=1e-12), callback=callback)
    assert result.reason == "callback" and len(seen) == 2
    assert all(c is not None and c.noise_floor == 0.0 for c in seen)
    assert seen[1].l1 < seen[0].l1


def test_time_budget_is_honoured_inside_an_iteration(rng):
    # Targets cubed coordinate-wise: the first steps backtrack many times.
    problem = make_problem(rng.uniform(-1, 1, (1500, 2)) ** 3)
    result = fit(problem, FitConfig(target_l1=1e-12, time_budget=0.05))
    assert result.reason == "time_budget" and not result.converged


@pytest.mark.parametrize("d", [1, 4])
def test_auto_is_monte_carlo_outside_2d_and_3d_and_exact_refuses_it(rng, d):
    problem = make_problem(rng.uniform(-1, 1, (16, d)))
    assert fit(problem, FitConfig(max_iter=1)).method == "newton"
    with pytest.raises(ValueError, match="exact"):
        fit(problem, FitConfig(method="exact"))


def test_accuracy_after_an_iteration_stop_describes_the_returned_heights(rng):
    problem = make_problem(rng.random((60, 2)) - 0.5)
    result = fit(problem, FitConfig(method="exact", target_l1=1e-10, max_iter=2))
    assert result.reason == "max_iter"
    cells = power_diagram(problem.targets.astype(np.float64), result.heights).cell_measures
    assert result.accuracy.l1 == pytest.approx(np.abs(cells - problem.weights).sum(), rel=1e-6)
    # The last record is the start of the last step: the returned heights are better.
    assert result.accuracy.l1 < result.history[-1].check.l1


@pytest.mark.parametrize("d", [2, 3])
def test_numpy_fallback_fits_the_same_heights_as_the_compiled_kernel(rng, d, monkeypatch):
    # Without a C compiler the numpy path serves the fit: same iterations, same heights.
    import solver.cells.power_diagram as pd

    if not pd.kernel_available():
        pytest.skip("only the numpy path is built here (the diagram tests cover it)")
    n = 150 if d == 2 else 60
    weights = rng.uniform(0.5, 2.0, n)
    problem = make_problem(clustered(rng, n, d), weights / weights.sum())
    compiled = fit(problem, FitConfig(target_l1=TARGET))
    monkeypatch.setattr(pd, "_laguerre", None)
    fallback = fit(problem, FitConfig(target_l1=TARGET))
    assert_exact_fit(problem, fallback, oracle=halfspace_cells if d == 3 else laguerre_areas)
    assert compiled.iterations == fallback.iterations
    np.testing.assert_allclose(compiled.heights, fallback.heights, rtol=0, atol=1e-9)
