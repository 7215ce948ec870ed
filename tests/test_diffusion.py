"""Diffusion coordinates, spectral clusters and the cluster-share rule on known structures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from solver import (
    DEFAULT_RULE,
    Adjacency,
    ClusterShare,
    GapThreshold,
    QuantileThreshold,
    diffusion_embedding,
    find_singular_set,
    parse_rule,
    rule_from_dict,
    rule_to_dict,
)
from solver.potential.diffusion import (
    KMEANS_RESTARTS,
    SEPARATION_QUORUM,
    diffusion_distances,
    separated_pairs,
)
from solver.potential.singular import cluster_share_threshold


def _blobs(rng, centres, n=100, spread=0.3):
    points = np.vstack([rng.normal(c, spread, (n, len(c))) for c in centres])
    return points, np.repeat(np.arange(len(centres)), n)


def _same_partition(a, b):
    # Two labelings agree up to renaming when each pair of points is together in both or neither.
    return np.array_equal(a[:, None] == a[None], b[:, None] == b[None])


def _knn_pairs(y, k):
    d = np.linalg.norm(y[:, None] - y[None], axis=2)
    nbrs = np.argsort(d, axis=1)[:, 1 : k + 1]
    pairs = {(min(i, j), max(i, j)) for i in range(len(y)) for j in nbrs[i]}
    return np.array(sorted(pairs), dtype=np.int64)


def _adjacency(pairs):
    n = len(pairs)
    ones = np.ones(n)
    return Adjacency(pairs=pairs, counts=ones.astype(np.int64), facet_measures=ones, n_samples=n)


def test_separated_blobs_are_the_clusters_and_far_apart_in_diffusion_distance(rng):
    y, label = _blobs(rng, [(0, 0, 0, 0), (4, 0, 0, 0), (0, 4, 0, 0)])
    e = diffusion_embedding(y, seed=1)
    assert e.n_clusters == 3 and e.coords.shape == (300, 2)
    assert _same_partition(e.clusters, label)
    # Every k-means start finds the same three blobs; the first start is ``clusters``.
    assert e.partitions.shape == (KMEANS_RESTARTS, 300)
    np.testing.assert_array_equal(e.partitions[0], e.clusters)
    assert all(_same_partition(row, label) for row in e.partitions)
    pairs = np.array([(i, j) for i in range(0, 300, 7) for j in range(i + 1, 300, 11)])
    dist = diffusion_distances(e.coords, pairs)
    across = label[pairs[:, 0]] != label[pairs[:, 1]]
    assert dist[~across].max() < 1e-3 * dist[across].min()


def test_one_blob_is_one_cluster_without_coordinates(rng):
    e = diffusion_embedding(rng.normal(size=(300, 6)))
    assert e.n_clusters == 1 and e.coords.shape == (300, 0)
    assert not e.clusters.any()
    for n in (1, 2):  # too few targets for a graph: one cluster
        assert diffusion_embedding(rng.normal(size=(n, 3))).n_clusters == 1


def test_touching_modes_are_found_by_the_eigengap():
    # Two Gaussian modes 4.5 sigma apart in 4D: one connected graph, so the eigengap decides;
    # the best possible split still misassigns 1.2 % (the Gaussians' overlap).
    y, label = _blobs(np.random.default_rng(0), [(0, 0, 0, 0), (4.5, 0, 0, 0)], 300, 1.0)
    e = diffusion_embedding(y)
    assert e.n_clusters == 2 and e.gap > 0
    agree = np.mean(e.clusters == label)
    assert max(agree, 1 - agree) > 0.98


def test_embedding_is_scale_free_and_seeded(rng):
    y, _ = _blobs(rng, [(0, 0, 0), (3, 0, 0)], n=600, spread=1.0)  # > 1000: sparse eigensolver
    pairs = _knn_pairs(y[:200], 4)
    a, b = diffusion_embedding(y, seed=5), diffusion_embedding(7.0 * y - 2.0, seed=5)
    assert a.n_clusters == b.n_clusters == 2
    np.testing.assert_allclose(
        diffusion_distances(a.coords, pairs), diffusion_distances(b.coords, pairs), atol=1e-5
    )
    again = diffusion_embedding(y, seed=5)
    np.testing.assert_array_equal(again.coords, a.coords)
    np.testing.assert_array_equal(again.clusters, a.clusters)


def test_small_separated_sets_are_not_over_split(rng):
    # 15 points per cluster: the eigengap alone would see 4 modes; the components are 2.
    y, label = _blobs(rng, [(-3.0, 0.0), (3.0, 0.0)], n=15)
    e = diffusion_embedding(y)
    assert e.n_clusters == 2 and _same_partition(e.clusters, label)


def test_cluster_share_flags_as_many_pairs_as_cross_clusters():
    y, label = _blobs(np.random.default_rng(0), [(0, 0, 0, 0), (4.5, 0, 0, 0)], 300, 1.0)
    adj = _adjacency(_knn_pairs(y, 6))
    s = find_singular_set(y, adj, ClusterShare(), seed=2)
    e = diffusion_embedding(y - y.mean(0), seed=2)  # the set's own frame is centred
    cross = e.separated(adj.pairs)
    assert s.frame == "diffusion" and s.clusters == 2 and 0 < cross.sum() == s.n_singular
    truth = label[adj.pairs[:, 0]] != label[adj.pairs[:, 1]]  # 2.3 % of the pairs
    precision = (s.singular & truth).sum() / s.n_singular
    assert precision > 0.5 and precision > 10 * truth.mean()  # flags mostly cross the modes
    assert "2 spectral clusters" in s.reason


def test_default_rule_uses_the_cluster_share_without_a_clear_gap():
    y, _ = _blobs(np.random.default_rng(0), [(0, 0, 0, 0), (4.5, 0, 0, 0)], 300, 1.0)
    adj = _adjacency(_knn_pairs(y, 6))
    s = find_singular_set(y, adj)
    assert s.frame == "diffusion" and s.gap_ratio < 2 and s.rule == ClusterShare()
    assert s.reason.startswith("default: no clear gap") and "spectral clusters" in s.reason
    # In another frame the cluster share still says how many pairs to flag.
    v = find_singular_set(y, adj, ClusterShare(), frame="valley")
    assert v.n_singular == s.n_singular and v.clusters == 2


def test_cluster_share_threshold_edges():
    scores = np.array([0.1, 0.4, 0.2, 0.9, 0.3])
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [0, 4]])
    value, share = cluster_share_threshold(scores, pairs, np.array([0, 0, 1, 1, 1]))
    assert share == pytest.approx(0.4) and np.count_nonzero(scores > value) == 2
    assert value == pytest.approx(0.35)  # between the 2nd and 3rd highest scores
    assert cluster_share_threshold(scores, pairs, np.zeros(5, np.int64)) == (math.inf, 0.0)
    value, share = cluster_share_threshold(scores[:2], pairs[:2], np.array([0, 1, 2, 3, 4]))
    assert share == 1.0 and np.all(scores[:2] > value)


def test_a_pair_is_separated_when_the_quorum_of_starts_split_it():
    # Four starts over five targets: the cut between 1 and 2 is in every start, the one between
    # 2 and 3 in three of four, the one between 0 and 1 in two (it moves), 3-4 in one.
    partitions = np.array([[0, 1, 2, 3, 3], [0, 0, 1, 2, 2], [0, 0, 1, 2, 3], [1, 1, 0, 0, 0]])
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    assert SEPARATION_QUORUM == 0.75
    np.testing.assert_array_equal(separated_pairs(pairs, partitions), [False, True, True, False])
    np.testing.assert_array_equal(separated_pairs(pairs, partitions[1]), [False, True, True, False])
    scores = np.array([0.1, 0.9, 0.5, 0.2])
    value, share = cluster_share_threshold(scores, pairs, partitions)
    assert share == 0.5 and np.count_nonzero(scores > value) == 2 and value == pytest.approx(0.35)
    with pytest.raises(ValueError, match="pair indices"):
        separated_pairs(np.array([[0, 5]]), partitions)


def test_rules_travel_as_dicts_and_text():
    assert rule_from_dict(rule_to_dict(DEFAULT_RULE)) == DEFAULT_RULE
    assert rule_to_dict(DEFAULT_RULE)["fallback"] == {"rule": "clusters"}
    median = GapThreshold(fallback=QuantileThreshold(q=0.5))
    assert rule_from_dict(rule_to_dict(median)) == median
    # Files written before the cluster share saved a bare quantile as the gap's fallback.
    legacy = {"rule": "gap", "min_regular": 0.5, "min_ratio": 2.0, "fallback": {"q": 0.5}}
    assert rule_from_dict(legacy) == median
    assert parse_rule("clusters") == ClusterShare()
    with pytest.raises(ValueError, match="clusters"):
        parse_rule("clusters:3")
    with pytest.raises(ValueError, match="fallback"):
        GapThreshold(fallback=GapThreshold())  # type: ignore[arg-type]
