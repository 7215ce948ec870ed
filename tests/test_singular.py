"""Adjacency, dihedral angles and the singular set, on geometry with known answers."""

import math

import numpy as np
import pytest

from solver import (
    Adjacency,
    CellIndex,
    FixedThreshold,
    GapThreshold,
    PassSpec,
    QuantileThreshold,
    SourceMeasure,
    dihedral_angles,
    estimate,
    find_singular_set,
)
from solver.potential.singular import (
    adjacency_from_estimate,
    frame_angles,
    gap_threshold,
    neighbour_radii,
    standardise_targets,
    valley_ratios,
)
from solver.potential.threshold import rule_from_dict, rule_to_dict


def _adjacency(pairs):
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n = len(pairs)
    return Adjacency(
        pairs=pairs, counts=np.ones(n, np.int64), facet_measures=np.ones(n), n_samples=100
    )


def test_dihedral_angle_formula():
    y = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    got = dihedral_angles(y, np.array([[0, 1], [0, 2], [1, 2]]))
    # n_0 = (0, 0, -1); n_1 = (1, 0, -1)/sqrt 2; n_2 = (0, 2, -1)/sqrt 5.
    want = [math.pi / 4, math.acos(1 / math.sqrt(5)), math.acos(1 / math.sqrt(10))]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert dihedral_angles(y, np.zeros((0, 2), np.int64)).shape == (0,)


def test_standard_frame_ignores_translation_and_scale(rng):
    y = rng.normal(size=(20, 3))
    pairs = np.array([[0, 1], [2, 5], [3, 19]])
    a = find_singular_set(y, _adjacency(pairs), rule=QuantileThreshold()).angles
    b = find_singular_set(7.0 * y + 3.0, _adjacency(pairs), rule=QuantileThreshold()).angles
    np.testing.assert_allclose(a, b, rtol=1e-9)
    s = standardise_targets(y)
    np.testing.assert_allclose(np.sqrt((s**2).sum(1).mean()), math.sqrt(3 / 12))
    raw = find_singular_set(y, _adjacency(pairs), QuantileThreshold(), frame="raw")
    np.testing.assert_allclose(raw.angles, dihedral_angles(y, pairs))


def test_adjacency_from_monte_carlo_top2_of_a_known_diagram():
    # Three targets on a line with h = -|y|^2 / 2 (a Voronoi diagram): cells are the strips
    # x < -1/4, |x| < 1/4 and x > 1/4, adjacent 0-1 and 1-2.
    y = np.array([[-0.5, 0.0], [0.0, 0.0], [0.5, 0.0]])
    index = CellIndex(y, -0.5 * (y**2).sum(1), backend="faiss")
    est = estimate(
        index, PassSpec(source=SourceMeasure(dim=2), n_samples=20000, seed=0, k=2, centres=True)
    )
    adj = adjacency_from_estimate(est, y)
    np.testing.assert_array_equal(adj.pairs, [[0, 1], [1, 2]])
    assert adj.counts.sum() == 20000 and adj.n_pairs == 2
    # Facets are the lines x = +-1/4 clipped to the square: measure 1 each.
    np.testing.assert_allclose(adj.facet_measures, [1.0, 1.0], rtol=0.1)
    centres, valid = est.mass_centres()
    assert valid.all()
    np.testing.assert_allclose(centres[:, 0], [-0.375, 0.0, 0.375], atol=0.01)


def test_rules_report_their_threshold():
    y = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [0.3, 0.0], [3.0, 0.0], [3.1, 0.0]])
    pairs = _adjacency([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]])
    fixed = find_singular_set(y, pairs, FixedThreshold(radians=0.5), frame="raw")
    assert fixed.rule == FixedThreshold(radians=0.5) and fixed.threshold == 0.5
    assert math.isnan(fixed.gap_ratio)
    np.testing.assert_array_equal(fixed.singular_pairs, [[3, 4]])
    quant = find_singular_set(y, pairs, QuantileThreshold(q=0.5))
    assert quant.rule == QuantileThreshold(q=0.5)
    assert quant.threshold == pytest.approx(np.quantile(quant.angles, 0.5))
    gap = find_singular_set(y, pairs)  # default: the gap rule
    assert gap.rule.name == "gap" and gap.gap_ratio > 5 and gap.reason.startswith("default: gap")
    np.testing.assert_array_equal(gap.singular_pairs, [[3, 4]])
    assert gap.n_singular == 1 and gap.n_regular == 4


def test_default_in_one_blob_is_the_median_in_the_valley_frame(rng):
    # One Gaussian blob: one spectral cluster, so no cluster structure to score distances in
    # or to count: the default takes the valley frame and, without a clear gap, the median.
    y = rng.normal(size=(200, 8))
    pairs = np.array([(i, j) for i in range(40) for j in range(i + 1, 40)])
    s = find_singular_set(y, _adjacency(pairs))
    assert s.frame == "valley" and s.clusters == 1 and s.gap_ratio < 2
    assert s.rule == QuantileThreshold(q=0.5)
    assert "no clear gap" in s.reason and "1 spectral cluster, so the median" in s.reason
    assert s.threshold == pytest.approx(np.median(s.angles))
    explicit = find_singular_set(y, _adjacency(pairs), GapThreshold(), frame="valley")
    assert explicit.rule == GapThreshold() and explicit.n_singular < s.n_singular
    # Asked for explicitly, the diffusion frame has nothing to measure: nothing is singular.
    d = find_singular_set(y, _adjacency(pairs), frame="diffusion")
    assert d.n_singular == 0 and d.embedding.shape == (200, 0)


def test_gap_rule_with_too_few_pairs_marks_nothing():
    assert gap_threshold(np.array([0.3]), 0.5) == (math.inf, pytest.approx(math.nan, nan_ok=True))
    s = find_singular_set(np.eye(2), _adjacency([[0, 1]]))
    assert s.threshold == math.inf and s.n_singular == 0


def test_lookup_either_order_and_unknown_pairs():
    y = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [3.1, 0.0]])
    s = find_singular_set(
        y, _adjacency([[0, 1], [1, 2], [2, 3]]), FixedThreshold(radians=0.5), frame="raw"
    )
    np.testing.assert_array_equal(s.lookup([1, 2, 0, 3], [0, 1, 3, 3]), [0, 1, -1, -1])
    np.testing.assert_array_equal(s.is_singular([2, 0], [1, 1]), [True, False])
    np.testing.assert_array_equal(s.is_admissible([2, 0, 0], [1, 1, 2]), [False, True, False])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FixedThreshold(radians=4.0), "radians"),
        (lambda: QuantileThreshold(q=1.0), "quantile must be"),
        (lambda: GapThreshold(min_regular=1.0), "min_regular must be"),
        (lambda: GapThreshold(min_ratio=0.5), "min_ratio must be"),
        (lambda: rule_from_dict({"rule": "median"}), "rule must be one of"),
        (lambda: rule_from_dict({"rule": "gap", "q": 0.3}), "bad fields"),
        (lambda: find_singular_set(np.eye(3), _adjacency([[0, 1]]), "gap"), "ThresholdRule"),
        (lambda: find_singular_set(np.eye(3), _adjacency([[0, 1]]), frame="polar"), "frame"),
    ],
)
def test_bad_rules_and_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_rules_round_trip_as_dicts():
    for rule in (FixedThreshold(radians=0.7), QuantileThreshold(q=0.3), GapThreshold()):
        assert rule_from_dict(rule_to_dict(rule)) == rule
    default = find_singular_set(np.eye(3), _adjacency([[0, 1], [1, 2]])).rule
    assert rule_from_dict(rule_to_dict(default)) == default


def test_bad_targets_and_pairs():
    with pytest.raises(ValueError, match="NaN"):
        dihedral_angles(np.array([[np.nan, 0.0], [1.0, 0.0]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="pair indices"):
        dihedral_angles(np.eye(2), np.array([[0, 2]]))
    with pytest.raises(ValueError, match="ordered"):
        _adjacency([[1, 0]])


def test_neighbour_radii_on_a_line():
    y = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(neighbour_radii(y, 1), [1.0, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(neighbour_radii(y, 2), [3.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(neighbour_radii(y, 9), [7.0, 6.0, 4.0, 7.0])  # capped at N - 1


def test_valley_ratio_is_large_only_across_a_gap():
    # Two dense rows of 5 points, 0.1 apart, 10 apart from each other: the midpoint of a
    # pair within a row has neighbours as close as its ends do; a pair across the gap has
    # its midpoint 5 away from everything.
    row = np.arange(5) * 0.1
    y = np.vstack([np.c_[row, np.zeros(5)], np.c_[row, np.full(5, 10.0)]])
    pairs = np.array([[1, 2], [2, 7]])
    ratio = valley_ratios(y, pairs, k=2)
    # Row pair: the midpoint (0.15, 0) has its 2nd nearest at 0.05, the ends at 0.1.
    np.testing.assert_allclose(ratio[0], 0.05 / 0.1)
    # Across: midpoint (0.2, 5) is 5 from point 2 (and 7); 2nd nearest also 5 (same column).
    np.testing.assert_allclose(ratio[1], 5.0 / 0.1)
    s = find_singular_set(y, _adjacency(pairs), QuantileThreshold(q=0.5), frame="valley")
    want = frame_angles(y, pairs, "standard") * valley_ratios(standardise_targets(y), pairs)
    np.testing.assert_allclose(s.angles, want)
    np.testing.assert_allclose(s.pair_angles(y, pairs), s.angles)
    np.testing.assert_array_equal(s.singular, [False, True])


def test_valley_ratio_candidates_never_underestimate(rng):
    # The midpoint's neighbours are searched among each end's 16 nearest targets: against an
    # exhaustive search the ratio can only grow, and for close pairs it is exact.
    y = rng.normal(size=(400, 4))
    near = np.array([(i, int(np.argsort(np.linalg.norm(y - y[i], axis=1))[1])) for i in range(50)])
    far = np.array([(i, 399 - i) for i in range(50)])
    pairs = np.sort(np.vstack([near, far]), axis=1)
    radii = neighbour_radii(y)
    mid = 0.5 * (y[pairs[:, 0]] + y[pairs[:, 1]])
    exact = np.sort(np.linalg.norm(mid[:, None] - y[None], axis=2), axis=1)[:, 4]
    exact = exact / np.sqrt(radii[pairs[:, 0]] * radii[pairs[:, 1]])
    got = valley_ratios(y, pairs, radii=radii)
    assert (got >= exact * (1 - 1e-12)).all()
    np.testing.assert_allclose(got[:50], exact[:50], rtol=1e-12)
