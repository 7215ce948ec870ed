"""bench/peers.py: peers skip cleanly when absent and return usable heights when present."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from bench.peers import _MODULES, PEERS, PeerConfig, installed, run_peer
from solver import check_accuracy, make_problem


def _tiny_problem():
    rng = np.random.default_rng(3)
    # Spread beyond the cube: with h = 0 only the convex hull's corners get mass.
    targets = rng.standard_normal((20, 2)).astype(np.float32)
    weights = rng.uniform(0.5, 1.5, size=20)
    return make_problem(targets, weights / weights.sum())


@pytest.mark.parametrize("peer", PEERS)
def test_absent_peer_is_reported_skipped(peer, monkeypatch):
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, _MODULES[peer], None)
    assert not installed(peer)
    run = run_peer(peer, _tiny_problem(), budget=1.0, seed=0)
    assert run.skipped == "not installed"
    assert run.heights is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="peer must be one of"):
        run_peer("nope", _tiny_problem(), budget=1.0, seed=0)
    with pytest.raises(ValueError, match="budget must be > 0"):
        run_peer("pot", _tiny_problem(), budget=0.0, seed=0)


@pytest.mark.parametrize("peer", PEERS)
def test_installed_peer_returns_heights_that_pass_a_sanity_check(peer):
    if not installed(peer):
        pytest.skip(f"{peer} not installed (the bench extra)")
    problem = _tiny_problem()
    # A small POT sample and timing run keep the test fast; the rest are the benchmark's.
    fast = PeerConfig(pot_samples=1 << 14, pot_calibration_steps=2000)
    run = run_peer(peer, problem, budget=0.5, seed=0, config=fast)
    assert run.skipped is None
    assert run.heights is not None
    assert run.heights.shape == (20,)
    assert np.isfinite(run.heights).all()
    assert run.iterations > 0
    start = check_accuracy(problem, np.zeros(20), n_samples=20_000, seed=11)
    acc = check_accuracy(problem, run.heights, n_samples=20_000, seed=11)
    # Sanity, not a race: well below 1.5 and below 3/4 of where every peer starts (h = 0).
    assert acc.l1 < 1.5
    assert acc.l1 < 0.75 * start.l1


def _exact_case(d):
    from solver.fitting import exact_newton
    from solver.fitting.config import FitConfig
    from solver.problem import make_problem

    rng = np.random.default_rng(5)
    y = rng.uniform(-0.45, 0.45, (40, d))
    v = rng.uniform(0.5, 1.5, 40)
    v /= v.sum()
    ctx = exact_newton.make_context(make_problem(y, v), FitConfig())
    return y, v, exact_newton.initial_state(ctx).heights


@pytest.mark.parametrize("d", [2, 3])
def test_exact_oracle_is_the_independent_halfspace_oracle(d):
    # The benchmark's own oracle (lower hull candidates, total checked) against the tests'
    # oracle that clips every cell by ALL targets, with heights that leave cells empty.
    from oracles import halfspace_cells

    from bench.exact_fit import oracle_measures

    y, _, h = _exact_case(d)
    h = h + 0.02 * np.random.default_rng(1).standard_normal(len(h))
    ref, centres = halfspace_cells(y, h)
    assert (ref == 0).any()
    cells = oracle_measures(y, h, -0.5, 0.5, np.full_like(y, np.nan))  # its own interior points
    np.testing.assert_allclose(cells, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(oracle_measures(y, h, -0.5, 0.5, centres), ref, rtol=0, atol=1e-12)


def test_absent_exact_peer_is_reported_skipped(monkeypatch):
    from bench import peers

    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    y, v, h = _exact_case(2)
    run = peers.run_exact_peer("pysdot", y, v, h, (-0.5, 0.5), 1e-6, budget=10.0)
    assert run.skipped == "not installed" and run.heights is None
    with pytest.raises(ValueError, match="exact peer must be one of"):
        peers.run_exact_peer("sdot", y, v, h, (-0.5, 0.5), 1e-6, budget=10.0)


@pytest.mark.parametrize("d", [2, 3])
def test_installed_exact_peer_meets_the_target_by_the_oracle(d):
    from bench.exact_fit import oracle_measures
    from bench.peers import run_exact_peer

    if importlib.util.find_spec("pysdot") is None:
        pytest.skip("pysdot not installed (the bench extra)")
    y, v, h = _exact_case(d)
    run = run_exact_peer("pysdot", y, v, h, (-0.5, 0.5), 1e-6, budget=120.0)
    assert run.skipped is None and run.heights is not None and run.iterations > 0
    cells = oracle_measures(y, run.heights, -0.5, 0.5, np.full_like(y, np.nan))
    assert np.abs(cells - v).sum() <= 1e-6
