"""Adjacency, dihedral angles and the singular set, on geometry with known answers."""

import math

import numpy as np
import pytest

from solver import (
    Adjacency,
    CellIndex,
    SourceMeasure,
    adjacency_from_estimate,
    dihedral_angles,
    estimate,
    find_singular_set,
)
from solver.potential.singular import gap_threshold, standardise_targets


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
    a = find_singular_set(y, _adjacency(pairs), rule="quantile").angles
    b = find_singular_set(7.0 * y + 3.0, _adjacency(pairs), rule="quantile").angles
    np.testing.assert_allclose(a, b, rtol=1e-9)
    s = standardise_targets(y)
    np.testing.assert_allclose(np.sqrt((s**2).sum(1).mean()), math.sqrt(3 / 12))
    raw = find_singular_set(y, _adjacency(pairs), rule="quantile", frame="raw")
    np.testing.assert_allclose(raw.angles, dihedral_angles(y, pairs))


def test_adjacency_from_monte_carlo_top2_of_a_known_diagram():
    # Three targets on a line with h = -|y|^2 / 2 (a Voronoi diagram): cells are the strips
    # x < -1/4, |x| < 1/4 and x > 1/4, adjacent 0-1 and 1-2.
    y = np.array([[-0.5, 0.0], [0.0, 0.0], [0.5, 0.0]])
    index = CellIndex(y, -0.5 * (y**2).sum(1), backend="faiss")
    est = estimate(index, SourceMeasure(dim=2), 20000, 0, k=2, centres=True)
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
    fixed = find_singular_set(y, pairs, 0.5, frame="raw")
    assert fixed.rule == "fixed" and fixed.threshold == 0.5 and math.isnan(fixed.quantile)
    np.testing.assert_array_equal(fixed.singular_pairs, [[3, 4]])
    quant = find_singular_set(y, pairs, rule="quantile", quantile=0.5)
    assert quant.rule == "quantile" and quant.quantile == 0.5
    assert quant.threshold == pytest.approx(np.quantile(quant.angles, 0.5))
    gap = find_singular_set(y, pairs)  # default: the gap rule
    assert gap.rule == "gap" and gap.gap_ratio > 5 and gap.reason.startswith("default: gap")
    np.testing.assert_array_equal(gap.singular_pairs, [[3, 4]])
    assert gap.n_singular == 1 and gap.n_regular == 4


def test_default_falls_back_to_the_median_without_a_clear_gap(rng):
    y = rng.normal(size=(200, 8))
    pairs = np.array([(i, j) for i in range(40) for j in range(i + 1, 40)])
    s = find_singular_set(y, _adjacency(pairs))
    assert s.rule == "quantile" and s.quantile == 0.5 and s.gap_ratio < 2
    assert "no clear gap" in s.reason
    assert s.threshold == pytest.approx(np.median(s.angles))
    explicit = find_singular_set(y, _adjacency(pairs), rule="gap")
    assert explicit.rule == "gap" and explicit.n_singular < s.n_singular


def test_gap_rule_with_too_few_pairs_marks_nothing():
    assert gap_threshold(np.array([0.3])) == (math.inf, pytest.approx(math.nan, nan_ok=True))
    s = find_singular_set(np.eye(2), _adjacency([[0, 1]]))
    assert s.threshold == math.inf and s.n_singular == 0


def test_lookup_either_order_and_unknown_pairs():
    y = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [3.1, 0.0]])
    s = find_singular_set(y, _adjacency([[0, 1], [1, 2], [2, 3]]), 0.5, frame="raw")
    np.testing.assert_array_equal(s.lookup([1, 2, 0, 3], [0, 1, 3, 3]), [0, 1, -1, -1])
    np.testing.assert_array_equal(s.is_singular([2, 0], [1, 1]), [True, False])
    np.testing.assert_array_equal(s.is_admissible([2, 0, 0], [1, 1, 2]), [False, True, False])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 4.0}, "threshold in"),
        ({"threshold": 0.5, "rule": "gap"}, "only for rule"),
        ({"rule": "median"}, "rule must be"),
        ({"rule": "quantile", "quantile": 1.0}, "quantile must be"),
        ({"frame": "polar"}, "frame must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_singular_set(np.eye(3), _adjacency([[0, 1], [1, 2]]), **kwargs)


def test_bad_targets_and_pairs():
    with pytest.raises(ValueError, match="NaN"):
        dihedral_angles(np.array([[np.nan, 0.0], [1.0, 0.0]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="pair indices"):
        dihedral_angles(np.eye(2), np.array([[0, 2]]))
    with pytest.raises(ValueError, match="ordered"):
        _adjacency([[1, 0]])
