"""Certified reuse returns exactly the cells of a brute-force search, at any height change."""

import numpy as np
import pytest
from oracles import brute_force

from solver import CellIndex, PassSpec, SourceMeasure, estimate
from solver.estimation.reuse import ReuseIndex


def brute_top(x, y, h, k):
    """Float64 brute force: the top-k cells and the gap from the k-th to the (k+1)-th score."""
    top, order = brute_force(x, y, h, k + 1)
    gaps = np.diff(-top, axis=1).min(axis=1)  # smallest gap among the first k + 1 scores
    return order[:, :k], top[:, :k], gaps


@pytest.mark.parametrize("step", [1e-4, 1e-2, 0.3])
def test_reuse_returns_the_brute_force_cells(step, rng):
    n, d = 60, 4
    y = (0.3 * rng.standard_normal((n, d))).astype(np.float32)
    h0 = 0.01 * rng.standard_normal(n)
    x = SourceMeasure(dim=d).sample(5000, seed=3)
    reuse = ReuseIndex(CellIndex(y, h0, backend="torch"), candidates=4)
    reuse.search(x, 2)  # first pass: full search, entries at h0
    h = h0
    for _ in range(3):  # successive height changes, like a line search
        h = h + step * rng.standard_normal(n)
        reuse.set_heights(h)
        scores, cells = reuse.search(x, 2)
        h32 = h.astype(np.float32).astype(np.float64)  # the index stores float32 heights
        want, want_s, gaps = brute_top(x, y, h32, 2)
        clear = gaps > 1e-5  # float32 ties aside, the cells must be exactly the brute force
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(cells[clear], want[clear])
        np.testing.assert_allclose(scores, want_s, atol=1e-5)
    stats = reuse.stats
    assert stats.certified + stats.searched == 4 * 5000
    if step == 1e-4:  # tiny changes: nearly every sample is certified without a search
        assert stats.certified >= 0.9 * 3 * 5000
    if step == 0.3:  # large changes: most samples go back to the full search
        assert stats.searched >= 5000 + 0.5 * 3 * 5000


def test_a_whole_estimate_through_reuse_equals_the_plain_estimate(rng):
    n, d = 40, 3
    y = (0.3 * rng.standard_normal((n, d))).astype(np.float32)
    index = CellIndex(y, backend="torch")
    reuse = ReuseIndex(CellIndex(y, backend="torch"))
    source = SourceMeasure(dim=d)
    for scale in (0.0, 0.003, 0.01):
        h = scale * rng.standard_normal(n)
        index.set_heights(h)
        reuse.set_heights(h)
        spec = PassSpec(source=source, n_samples=4000, seed=1, gap_width=0.01, batch_size=1000)
        ref, got = estimate(index, spec), estimate(reuse, spec)
        np.testing.assert_array_equal(got.counts, ref.counts)
        np.testing.assert_array_equal(got.pairs, ref.pairs)
        np.testing.assert_array_equal(got.slab_counts, ref.slab_counts)
    assert reuse.stats.certified > 0


def test_clear_and_bad_candidates():
    y = np.eye(3, dtype=np.float32)
    reuse = ReuseIndex(CellIndex(y, backend="torch"), candidates=2)
    reuse.search(SourceMeasure(dim=3).sample(100, 0), 2)
    reuse.clear()
    assert reuse.stats.certified == reuse.stats.searched == 0
    with pytest.raises(ValueError, match="candidates"):
        ReuseIndex(CellIndex(y, backend="torch"), candidates=1)


def test_a_few_large_height_increases_are_scored_exactly_not_bounded_for_all(rng):
    n, d = 400, 4
    y = (0.3 * rng.standard_normal((n, d))).astype(np.float32)
    h0 = 0.01 * rng.standard_normal(n)
    x = SourceMeasure(dim=d).sample(5000, seed=3)
    h = h0 + 1e-4 * rng.standard_normal(n)
    h[[7, 99]] += 0.2  # two cells grow a lot (a rescue step), the rest barely move
    certified = {}
    for outliers in (0, 4):
        reuse = ReuseIndex(CellIndex(y, h0, backend="torch"), candidates=4)
        reuse._outliers = outliers  # 0: the plain bound max_j dh_j for every cell
        reuse.search(x, 2)
        reuse.set_heights(h)
        scores, cells = reuse.search(x, 2)
        want, want_s, gaps = brute_top(x, y, h.astype(np.float32).astype(np.float64), 2)
        clear = gaps > 1e-5  # float32 ties aside, exactly the brute force's top 2
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(cells[clear], want[clear])
        np.testing.assert_allclose(scores, want_s, atol=1e-5)
        certified[outliers] = reuse.stats.certified
    assert certified[4] > 2 * certified[0]


def test_entries_stay_within_their_byte_budget_and_the_answers_exact(rng):
    """Past ``max_bytes`` a batch keeps no entry and is searched in full each time."""
    from solver.estimation.reuse import entry_bytes

    n, d = 60, 3
    y = (0.3 * rng.standard_normal((n, d))).astype(np.float32)
    h0 = 0.01 * rng.standard_normal(n)
    x = SourceMeasure(dim=d).sample(4000, seed=3)
    per_sample = entry_bytes(n, 4)
    assert per_sample == 12 and entry_bytes(70_000, 4) == 20  # uint16 cells up to 65,536
    reuse = ReuseIndex(CellIndex(y, h0, backend="torch"), candidates=4, max_bytes=per_sample * 2500)
    batches = [x[:1000], x[1000:2000], x[2000:3000], x[3000:]]
    for b in batches:
        reuse.search(b, 2)
    assert reuse.kept_bytes == per_sample * 2000  # two batches fit, the third would not
    h = h0 + 1e-4 * rng.standard_normal(n)
    reuse.set_heights(h)
    h32 = h.astype(np.float32).astype(np.float64)
    for b in batches:
        scores, cells = reuse.search(b, 2)
        want, want_s, gaps = brute_top(b, y, h32, 2)
        clear = gaps > 1e-5
        np.testing.assert_array_equal(cells[clear], want[clear])
        np.testing.assert_allclose(scores, want_s, atol=1e-5)
    assert reuse.stats.certified >= 1500  # the kept batches were certified
    assert reuse.kept_bytes <= per_sample * 2500
    reuse.clear()
    assert reuse.kept_bytes == 0


def test_a_stored_bound_is_never_below_the_float64_bound(rng):
    from solver.estimation.reuse import _round_up

    b = rng.standard_normal(100_000) * 10.0 ** rng.integers(-8, 3, 100_000)
    stored = _round_up(b)
    assert stored.dtype == np.float32 and (stored.astype(np.float64) >= b).all()
    assert (stored.astype(np.float64) - b <= np.abs(b) * 2**-23).all()
