"""The hierarchical start and the stage schedule of the Monte Carlo Newton fit."""

import numpy as np
import pytest

from solver import CellIndex, FitConfig, NewtonConfig, SourceMeasure, fit, make_problem
from solver.cells.index import CellIndex as _Index
from solver.estimation.estimator import HostEstimator
from solver.fitting import hierarchical, newton


def _blobs(rng, n_per, centres, spread):
    labels = np.repeat(np.arange(len(centres)), n_per)
    points = centres[labels] + spread * rng.standard_normal((labels.size, centres.shape[1]))
    return points.astype(np.float32), labels


def test_kmeans_recovers_well_separated_blobs(rng):
    centres = 10.0 * np.eye(4)
    points, truth = _blobs(rng, 50, centres, 0.1)
    labels = hierarchical.kmeans(points, 4, seed=3)
    # Same partition up to renaming: each true blob maps to exactly one cluster and back.
    pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 4
    assert len({t for t, _ in pairs}) == len({c for _, c in pairs}) == 4


def test_kmeans_is_deterministic_under_a_seed(rng):
    points = rng.standard_normal((300, 3)).astype(np.float32)
    a = hierarchical.kmeans(points, 10, seed=1)
    assert np.array_equal(a, hierarchical.kmeans(points, 10, seed=1))


def test_kmeans_plus_plus_draws_the_centres_squared_differences_would(rng):
    # The seeding computes squared distances from norms and one product per centre; the
    # draws must be those of the textbook form, sum((x - c)^2), for the same generator.
    x = (rng.standard_normal((2_000, 6)) + 5.0 * rng.integers(0, 4, (2_000, 1))).astype(np.float64)
    x[7] = x[3]  # an exact duplicate: its distance to a drawn twin is 0, never a rounding > 0
    draws = np.random.default_rng(4)
    first = int(draws.integers(x.shape[0]))
    reference, nearest = [x[first]], np.square(x - x[first]).sum(axis=1)
    for _ in range(1, 25):
        pick = draws.choice(x.shape[0], p=nearest / nearest.sum())
        reference.append(x[pick])
        nearest = np.minimum(nearest, np.square(x - x[pick]).sum(axis=1))
    centres = hierarchical._kmeans_plus_plus(x, 25, np.random.default_rng(4))
    np.testing.assert_array_equal(centres, np.array(reference))


def _empty_and_l1(targets, heights, n_samples=200_000):
    x = SourceMeasure(dim=targets.shape[1]).sample(n_samples, seed=11)
    counts = np.bincount(CellIndex(targets, heights).assign(x), minlength=len(targets))
    return int(np.count_nonzero(counts == 0)), float(
        np.abs(counts / n_samples - 1 / len(targets)).sum()
    )


def _context(targets, config, start=None):
    problem = make_problem(targets)
    index = _Index(problem.targets)
    return newton.make_context(problem, config, index=index, estimator=HostEstimator(), start=start)


def _fit_coarse(problem, config):
    return fit(problem, config).heights


def test_hierarchical_start_fills_far_more_cells_than_the_voronoi_start(rng):
    # Five tight, unequal clusters in 6D, already in the fit's frame scale (spread ~ cube's).
    centres = 0.4 * rng.standard_normal((5, 6))
    points, _ = _blobs(rng, 80, centres, 0.05)
    config = FitConfig(newton=NewtonConfig(coarse_clusters=20))
    start = hierarchical.start_heights(make_problem(points), config, _fit_coarse)
    voronoi = _context(points, FitConfig(newton=NewtonConfig(coarse_clusters=0)))
    hier = _context(points, config, start)
    empty_v, l1_v = _empty_and_l1(points, newton.initial_state(voronoi).heights)
    empty_h, l1_h = _empty_and_l1(points, newton.initial_state(hier).heights)
    assert empty_h < 0.5 * empty_v
    assert l1_h < 0.8 * l1_v


def test_the_start_is_none_where_the_config_or_n_rule_it_out(rng):
    problem = make_problem(rng.standard_normal((40, 5)))

    def refuse(problem, config):
        raise AssertionError("no coarse fit expected")

    for clusters in (0, 11):  # none asked; 4 K > N
        config = FitConfig(newton=NewtonConfig(coarse_clusters=clusters))
        assert hierarchical.start_heights(problem, config, refuse) is None
    assert hierarchical.start_heights(problem, FitConfig(), refuse) is None  # sqrt(40) < 8


def test_the_coarse_fit_gets_a_newton_config_without_a_start_of_its_own(rng):
    problem = make_problem(rng.standard_normal((100, 5)))
    seen = []

    def record(coarse, config):
        seen.append((coarse, config))
        return fit(coarse, config).heights

    config = FitConfig(method="auto", target_l1=0.05, seed=3)
    h = hierarchical.start_heights(problem, config, record)
    ((coarse, coarse_config),) = seen
    assert coarse.n_targets <= 10 and np.isclose(coarse.weights.sum(), 1.0)
    assert coarse_config.method == "newton" and coarse_config.newton.coarse_clusters == 0
    assert coarse_config.target_l1 == 0.1 and coarse_config.seed != config.seed
    assert h.shape == (100,) and abs(h.mean()) < 1e-12


def test_stage_schedule_grows_to_the_fit_size_then_checks_on_fresh_streams(rng):
    targets = rng.standard_normal((200, 5)).astype(np.float32)
    ctx = _context(targets, FitConfig(target_l1=0.05, newton=NewtonConfig(coarse_clusters=0)))
    sizes = newton.stage_sizes(ctx)
    assert sizes == sorted(sizes) and sizes[-1] == ctx.fit_samples
    growth = [b / a for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)]
    assert growth == pytest.approx([4.0] * len(growth), rel=1e-6)
    # Heights fitted on M_f samples plus the check's own noise stay within the target.
    floor = lambda m: np.sqrt(2 * ctx.weights / (np.pi * m)).sum()  # noqa: E731
    assert np.hypot(floor(ctx.fit_samples), floor(ctx.check_samples)) <= 0.05 + 1e-12
    assert floor(ctx.check_samples) == pytest.approx(0.7 * 0.05, rel=1e-3)
    fit_seeds = {newton.stage_seed(ctx, 0, s) for s in range(len(sizes))}
    check_seeds = [newton.stage_seed(ctx, 0, len(sizes) + s) for s in range(3)]
    assert len(fit_seeds) == 1 and len(set(check_seeds)) == 3
    assert not fit_seeds & set(check_seeds)
    assert newton.stage_size(ctx, len(sizes)) == ctx.check_samples


def test_fit_with_hierarchical_start_reaches_the_target_deterministically(rng):
    centres = 2.0 * rng.standard_normal((4, 5))
    points, _ = _blobs(rng, 60, centres, 0.3)
    cfg = FitConfig(target_l1=0.2, seed=4, newton=NewtonConfig(coarse_clusters=8))
    first = fit(make_problem(points), cfg)
    again = fit(make_problem(points), cfg)
    assert first.converged and first.accuracy.l1 <= 0.2
    assert np.array_equal(first.heights, again.heights)


def test_negative_coarse_clusters_is_refused():
    with pytest.raises(ValueError, match="coarse_clusters"):
        NewtonConfig(coarse_clusters=-1)


def test_the_clustering_stops_at_its_deadline_with_the_centres_drawn_so_far(rng):
    points = rng.standard_normal((500, 4)).astype(np.float32)
    past = -1.0  # any time.perf_counter() value is later
    assert np.array_equal(hierarchical.kmeans(points, 10, seed=1, deadline=past), np.zeros(500))
    seeded = hierarchical._kmeans_plus_plus(points, 10, np.random.default_rng(1), past)
    assert seeded.shape == (1, 4)
    # A deadline far away changes nothing.
    np.testing.assert_array_equal(
        hierarchical.kmeans(points, 10, seed=1, deadline=float("inf")),
        hierarchical.kmeans(points, 10, seed=1),
    )


def test_a_start_past_the_deadline_is_still_a_start(rng):
    problem = make_problem(rng.standard_normal((400, 5)))
    h = hierarchical.start_heights(problem, FitConfig(), _fit_coarse, deadline=-1.0)
    assert h is not None and h.shape == (400,) and np.isfinite(h).all()


def test_a_budget_spent_in_the_start_ends_the_fit_with_heights(rng):
    result = fit(make_problem(rng.standard_normal((400, 5))), FitConfig(time_budget=1e-9))
    assert result.reason == "time_budget" and result.iterations == 0
    assert np.isfinite(result.heights).all()


def test_the_start_in_row_blocks_is_the_start_in_one_block(rng, monkeypatch):
    # The float64 row arithmetic runs over blocks of rows to bound its memory; the heights
    # must not depend on the block size, to the last bit.
    centres = 0.4 * rng.standard_normal((5, 6))
    points, _ = _blobs(rng, 80, centres, 0.05)
    problem = make_problem(points)
    config = FitConfig(newton=NewtonConfig(coarse_clusters=20))
    whole = hierarchical.start_heights(problem, config, _fit_coarse)
    monkeypatch.setattr(hierarchical, "_BLOCK_ROWS", 7)
    blocks = hierarchical.start_heights(problem, config, _fit_coarse)
    np.testing.assert_array_equal(blocks, whole)
