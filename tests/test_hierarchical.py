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


def _empty_and_l1(targets, heights, n_samples=200_000):
    x = SourceMeasure(dim=targets.shape[1]).sample(n_samples, seed=11)
    counts = np.bincount(CellIndex(targets, heights).assign(x), minlength=len(targets))
    return int(np.count_nonzero(counts == 0)), float(
        np.abs(counts / n_samples - 1 / len(targets)).sum()
    )


def _context(targets, config):
    problem = make_problem(targets)
    index = _Index(problem.targets)
    return newton.make_context(
        problem.targets,
        problem.weights,
        problem.source,
        index,
        config,
        estimator=HostEstimator(),
    )


def test_hierarchical_start_fills_far_more_cells_than_the_voronoi_start(rng):
    # Five tight, unequal clusters in 6D, already in the fit's frame scale (spread ~ cube's).
    centres = 0.4 * rng.standard_normal((5, 6))
    points, _ = _blobs(rng, 80, centres, 0.05)
    voronoi = _context(points, FitConfig(newton=NewtonConfig(coarse_clusters=0)))
    hier = _context(points, FitConfig(newton=NewtonConfig(coarse_clusters=20)))
    empty_v, l1_v = _empty_and_l1(points, newton.initial_state(voronoi).heights)
    empty_h, l1_h = _empty_and_l1(points, newton.initial_state(hier).heights)
    assert empty_h < 0.5 * empty_v
    assert l1_h < 0.8 * l1_v


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
