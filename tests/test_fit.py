import dataclasses

import numpy as np
import pytest
from oracles import brute_force, laguerre_areas

from solver import (
    CellIndex,
    FitConfig,
    PassSpec,
    SourceMeasure,
    dual_value,
    estimate,
    fit,
    kantorovich_potential,
    load_state,
    make_problem,
    save_state,
)
from solver.estimation.estimator import HostEstimator
from solver.fitting import adam as adam_method


def clustered(rng, n, centres=4, spread=0.08):
    c = rng.uniform(-0.3, 0.3, (centres, 2))
    return c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, 2))


def test_fit_matches_exact_cell_areas_in_2d(rng):
    problem = make_problem(clustered(rng, 32))
    result = fit(problem, FitConfig(target_l1=0.02, seed=1))
    assert result.converged and result.reason == "target"
    assert result.accuracy.l1 <= 0.02 and result.accuracy.empty_cells == 0
    areas = laguerre_areas(problem.targets, result.heights)
    assert np.isclose(areas.sum(), 1.0, atol=1e-9)
    assert np.abs(areas - problem.weights).sum() <= 0.02


def test_fit_with_non_uniform_weights_and_unit_cube(rng):
    y = rng.uniform(0, 1, (16, 2))
    v = rng.uniform(0.5, 2.0, 16)
    problem = make_problem(y, v / v.sum(), domain="unit")
    result = fit(problem, FitConfig(target_l1=0.02))
    areas = laguerre_areas(problem.targets, result.heights, low=0.0)
    assert result.converged
    assert np.abs(areas - problem.weights).sum() <= 0.02


def test_symmetric_targets_give_symmetric_heights():
    a = 0.25
    square = np.array([[a, a], [-a, a], [-a, -a], [a, -a], [0.0, 0.0]])
    v = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    result = fit(make_problem(square, v), FitConfig(target_l1=0.01))
    h = result.heights
    np.testing.assert_allclose(h[:4], h[:4].mean(), atol=2e-3)
    areas = laguerre_areas(square, h)
    np.testing.assert_allclose(areas, 0.2, atol=0.005)


def test_same_seed_same_heights_other_seed_other_heights(rng):
    problem = make_problem(clustered(rng, 24))
    config = FitConfig(method="newton", target_l1=0.05, seed=5)
    first, second = fit(problem, config), fit(problem, config)
    np.testing.assert_array_equal(first.heights, second.heights)
    other = fit(problem, dataclasses.replace(config, seed=6))
    assert not np.array_equal(first.heights, other.heights)


@pytest.mark.parametrize("method", ["newton", "adam"])
def test_resume_from_checkpoint_equals_uninterrupted(method, rng, tmp_path):
    problem = make_problem(clustered(rng, 64))
    config = FitConfig(method=method, target_l1=0.03, max_iter=25, seed=3)
    whole = fit(problem, config)
    part = fit(problem, dataclasses.replace(config, max_iter=11))
    assert part.reason == "max_iter" and part.iterations == 11
    save_state(tmp_path / "state.npz", part.state)
    resumed = fit(problem, config, resume=load_state(tmp_path / "state.npz"))
    np.testing.assert_array_equal(resumed.heights, whole.heights)
    assert resumed.iterations == whole.iterations
    assert [r.train_l1 for r in resumed.history] == [r.train_l1 for r in whole.history]
    assert list(tmp_path.iterdir()) == [tmp_path / "state.npz"]  # no temp files left


def test_resume_mid_stage_equals_uninterrupted_in_4d():
    """A Newton fit resumed inside a stage, where the uninterrupted fit reuses the stage's
    earlier searches and the resumed one searches afresh, ends with the same heights."""
    gen = np.random.default_rng(0)
    centres = gen.standard_normal((5, 4))
    points = centres[gen.integers(0, 5, 200)] + 0.3 * gen.standard_normal((200, 4))
    problem = make_problem(points.astype(np.float32))
    config = FitConfig(method="newton", target_l1=0.05, seed=0)
    states = []
    whole = fit(problem, config, callback=lambda p: states.append(p.state))
    mid_stage = [s for s in states[:-1] if s.counters["phase"] == 1 and s.counters["stage_iter"]]
    assert len(mid_stage) >= 3
    for state in mid_stage[:3]:
        resumed = fit(problem, config, resume=state)
        np.testing.assert_array_equal(resumed.heights, whole.heights, err_msg=f"{state.iteration}")
        assert resumed.iterations == whole.iterations


def test_the_checkpoint_carries_its_config_and_a_resume_compares_it(rng, tmp_path):
    problem = make_problem(clustered(rng, 64))
    config = FitConfig(method="newton", target_l1=0.03, max_iter=6, seed=3)
    part = fit(problem, config)
    assert part.state.config == config
    save_state(tmp_path / "state.npz", part.state)
    saved = load_state(tmp_path / "state.npz")
    assert saved.config == config
    # Settings that change the iterations are refused, each named with both values.
    changed = dataclasses.replace(
        config, target_l1=0.05, newton=dataclasses.replace(config.newton, growth=2.0)
    )
    with pytest.raises(ValueError, match=r"target_l1: 0.03 -> 0.05.*newton"):
        fit(problem, changed, resume=saved)
    # Stopping limits may change: the fit goes on as one.
    longer = dataclasses.replace(config, max_iter=12, time_budget=600.0)
    resumed = fit(problem, longer, resume=saved)
    whole = fit(problem, dataclasses.replace(config, max_iter=12))
    np.testing.assert_array_equal(resumed.heights, whole.heights)
    assert resumed.state.config == longer
    # So may the backend and estimator (another machine's worker resumes the job).
    elsewhere = dataclasses.replace(config, backend="torch", estimator="host")
    assert fit(problem, elsewhere, resume=saved).state.config == elsewhere


def test_a_checkpoint_without_a_config_still_resumes(rng, tmp_path):
    """States saved before configs were recorded: no comparison, the same continuation."""
    import io
    import json

    problem = make_problem(clustered(rng, 64))
    config = FitConfig(method="newton", target_l1=0.03, max_iter=12, seed=3)
    save_state(tmp_path / "new.npz", fit(problem, dataclasses.replace(config, max_iter=6)).state)
    with np.load(tmp_path / "new.npz") as z:
        entries = {name: z[name] for name in z.files}
    meta = json.loads(str(entries["meta"]))
    del meta["config"]
    entries["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **entries)
    (tmp_path / "old.npz").write_bytes(buf.getvalue())
    old = load_state(tmp_path / "old.npz")
    assert old.config is None
    resumed = fit(problem, config, resume=old)
    np.testing.assert_array_equal(resumed.heights, fit(problem, config).heights)
    assert resumed.state.config == config  # the next checkpoint records it


def test_resume_refuses_a_state_of_another_problem(rng):
    part = fit(make_problem(clustered(rng, 32)), FitConfig(max_iter=2))
    with pytest.raises(ValueError, match="targets"):
        fit(make_problem(clustered(rng, 33)), FitConfig(max_iter=3), resume=part.state)
    with pytest.raises(ValueError, match="seed"):
        fit(make_problem(clustered(rng, 32)), FitConfig(max_iter=3, seed=9), resume=part.state)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable fit state"):
        load_state(bad)


def test_callback_sees_progress_and_can_stop(rng):
    seen = []

    def callback(progress):
        seen.append(progress.record.iteration)
        return len(seen) < 3

    result = fit(make_problem(clustered(rng, 32)), FitConfig(method="newton"), callback=callback)
    assert result.reason == "callback" and seen == [1, 2, 3] and result.iterations == 3


def test_time_budget_stops_the_fit(rng):
    config = FitConfig(method="newton", target_l1=1e-4, time_budget=0.5)
    result = fit(make_problem(clustered(rng, 64)), config)
    assert result.reason == "time_budget" and not result.converged
    assert result.elapsed >= 0.5


def test_adam_step_is_the_authors_update(rng):
    problem = make_problem(clustered(rng, 16))
    config = FitConfig(method="adam")
    index = CellIndex(problem.targets, backend="torch")
    ctx = adam_method.make_context(
        problem, config, index=index, estimator=HostEstimator(), start=None
    )
    state = adam_method.initial_state(ctx)
    new, record, _ = adam_method.step(ctx, state)
    seed = adam_method.derive_seed(0, 2)
    est = estimate(
        index,
        PassSpec(source=problem.source, n_samples=config.adam.initial_samples, seed=seed, k=1),
    )
    g = est.cell_measures - problem.weights
    expected = -config.adam.lr * (0.1 * g) / (np.sqrt(0.001 * g * g) + 1e-8)
    np.testing.assert_allclose(new.heights, expected - expected.mean(), rtol=1e-9, atol=1e-12)
    assert record.train_l1 == pytest.approx(np.abs(g).sum())


def test_duality_gap_closes_at_the_optimum(rng):
    problem = make_problem(clustered(rng, 24))
    result = fit(problem, FitConfig(target_l1=0.02))
    index = CellIndex(problem.targets, result.heights)
    # Primal and dual are measured on the same samples, so their gap carries no sampling noise
    # of its own: 2^16 samples suffice for the 2e-3 tolerance.
    est = estimate(index, PassSpec(source=problem.source, n_samples=1 << 16, seed=99, k=1))
    dual = dual_value(est, problem.source, problem.targets, result.heights, problem.weights)
    assert est.transport_cost == pytest.approx(dual, abs=2e-3)
    x = SourceMeasure(dim=2).sample(1000, seed=1)
    phi = kantorovich_potential(index, x)
    psi = 0.5 * np.square(problem.targets.astype(np.float64)).sum(axis=1) + result.heights
    cost = 0.5 * np.square(x[:, None, :] - problem.targets[None]).sum(axis=2)
    assert np.all(phi[:, None] + psi[None] <= cost + 1e-5)  # admissible dual pair


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="method"):
        FitConfig(method="sgd")
    with pytest.raises(ValueError, match="target_l1"):
        FitConfig(target_l1=0)
    with pytest.raises(ValueError, match="time_budget"):
        FitConfig(time_budget=-1)


def test_fit_converges_on_tight_clusters_with_near_duplicate_targets():
    # The 25-Gaussian grid (std 0.05, means 2 apart): targets of one mode are near-duplicates
    # whose facets move by dh / |y_i - y_j|. A rescue of empty cells with a margin relative to
    # |h| swallowed neighbours, so every Newton iteration rescued again (stalled at L1 0.35).
    rng = np.random.default_rng(5)
    means = np.array([(-4 + 2 * i, -4 + 2 * j) for i in range(5) for j in range(5)], float)
    points = means[rng.integers(0, 25, 100)] + 0.05 * rng.standard_normal((100, 2))
    config = FitConfig(method="newton", target_l1=0.02, seed=5, time_budget=120)
    result = fit(make_problem(points), config)
    assert result.converged and result.accuracy.empty_cells == 0


def _spy_checks(monkeypatch):
    """Record (targets, heights, source, m, seed, estimate) of every independent check."""
    from solver.fitting import newton

    seen = []
    real = newton._check_estimate

    def spy(ctx, h, m, seed):
        est = real(ctx, h, m, seed)
        seen.append((ctx.index.targets, h.copy(), ctx.source, m, seed, est))
        return est

    monkeypatch.setattr(newton, "_check_estimate", spy)
    return seen


def _exact_counts(targets, h, source, m, seed):
    """Top-1 cells of the stream's first m samples by a float64 brute force."""
    counts = np.zeros(len(h), dtype=np.int64)
    for x in source.batches(m, seed, 8192):
        counts += np.bincount(brute_force(x, targets, h, 1)[1][:, 0], minlength=len(h))
    return counts


def test_independent_check_is_an_exact_top1_count_of_fresh_samples(monkeypatch, rng):
    # The check is a top-1 pass on the plain index (no reuse entries): its counts must be a
    # brute-force assignment of the same samples, and the reported L1 their L1.
    seen = _spy_checks(monkeypatch)
    y = clustered(np.random.default_rng(3), 64, spread=0.08)
    y = np.concatenate([y, rng.uniform(-0.3, 0.3, (64, 2))], axis=1)  # d = 4: Monte Carlo
    result = fit(make_problem(y), FitConfig(method="newton", target_l1=0.03, seed=2))
    assert result.converged and seen
    targets, h, source, m, seed, est = seen[-1]
    assert est.n_samples == m and est.pairs.shape == (0, 2)  # top-1 only
    exact = _exact_counts(targets, h, source, m, seed)
    # float32 scores may order near-ties differently from float64: a handful of samples.
    assert np.abs(exact - est.counts).sum() <= 2e-4 * m
    assert result.accuracy.l1 == pytest.approx(np.abs(est.counts / m - 1 / 64).sum())


def test_a_failed_check_continues_newton_on_its_samples(monkeypatch, rng):
    # One short fitting stage and one Newton step per stage: the first checks must fail, and
    # each failed check stage then takes its Newton step on the same fresh samples (top-2).
    seen = _spy_checks(monkeypatch)
    y = rng.uniform(-0.4, 0.4, (48, 4))
    newton_cfg = dataclasses.replace(
        FitConfig().newton, warmup_max_iters=1, growth=1e9, max_stage_iters=1, coarse_clusters=0
    )
    config = FitConfig(method="newton", target_l1=0.03, seed=4, newton=newton_cfg)
    result = fit(make_problem(y), config)
    assert result.converged and result.reason == "target"
    checks = [r for r in result.history if r.check is not None]
    assert checks[0].check.l1 > 0.03 and checks[-1].check.l1 <= 0.03
    assert len(seen) == len(checks)
    # Every check drew a new stream; every failed check's Newton step fitted on the last
    # fitting stage's samples and those of every check so far (its own included).
    assert len({s[4] for s in seen}) == len(seen)
    m_check = seen[0][3]
    first = next(i for i, r in enumerate(result.history) if r.check is not None)
    m_fit = result.history[first - 1].n_samples  # the last fitting stage's size
    for j, r in enumerate(checks[:-1]):
        assert r.n_samples == m_fit + (j + 1) * m_check
