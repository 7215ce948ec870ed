"""bench/peers.py: peers skip cleanly when absent and return usable heights when present."""

from __future__ import annotations

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
