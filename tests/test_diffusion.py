"""Diffusion coordinates, spectral clusters and the cluster-share rule on known structures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from solver import (
    DEFAULT_RULE,
    Adjacency,
    ClusterShare,
    GapThreshold,
    QuantileThreshold,
    diffusion_embedding,
    find_singular_set,
    parse_rule,
)
from solver.potential.diffusion import (
    KMEANS_RESTARTS,
    MODE_STEPS,
    SEPARATION_QUORUM,
    count_modes,
    diffusion_distances,
    separated_pairs,
)
from solver.potential.singular import cluster_share_threshold
from solver.potential.threshold import rule_from_dict, rule_to_dict


def _blobs(rng, centres, n=100, spread=0.3):
    points = np.vstack([rng.normal(c, spread, (n, len(c))) for c in centres])
    return points, np.repeat(np.arange(len(centres)), n)


def _same_partition(a, b):
    # Two labelings agree up to renaming when each pair of points is together in both or neither.
    return np.array_equal(a[:, None] == a[None], b[:, None] == b[None])


def _purity(clusters, label):
    # Share of the points in their cluster's majority label.
    return sum(np.bincount(label[clusters == c]).max() for c in np.unique(clusters)) / len(label)


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


def test_touching_modes_are_found_by_their_separate_time_scales():
    # Two Gaussian modes 4.5 sigma apart in 4D: one connected graph, so the walk's time scales
    # decide; the best possible split still misassigns 1.2 % (the Gaussians' overlap).
    y, label = _blobs(np.random.default_rng(0), [(0, 0, 0, 0), (4.5, 0, 0, 0)], 300, 1.0)
    e = diffusion_embedding(y)
    assert e.n_clusters == 2 and e.chosen_by == "slow modes"
    assert e.separation > 5  # the walk leaves the two modes far more slowly than their halves
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
    # 15 points per cluster: the largest eigengap would see 4 modes; the components are 2.
    y, label = _blobs(rng, [(-3.0, 0.0), (3.0, 0.0)], n=15)
    e = diffusion_embedding(y)
    assert e.n_clusters == 2 and _same_partition(e.clusters, label)


# The walk's 51 leading eigenvalues on four embedded digits autoencoders (all 1,797 digits,
# d = 8) that differ only in their training seed (0, 1, 2) or in MKL's float code path
# (conditional-reproducibility mode): the same data, slightly different latents.
DIGITS_SPECTRA = {
    "seed 0": "1.0000 0.9947 0.9921 0.9910 0.9878 0.9836 0.9825 0.9807 0.9791 0.9682 0.9556 "
    "0.9512 0.9489 0.9461 0.9319 0.9311 0.9265 0.9235 0.9202 0.9150 0.9076 0.9032 0.9014 "
    "0.8995 0.8927 0.8905 0.8852 0.8794 0.8741 0.8724 0.8693 0.8685 0.8603 0.8568 0.8519 "
    "0.8498 0.8421 0.8402 0.8375 0.8297 0.8279 0.8242 0.8233 0.8180 0.8100 0.7987 0.7977 "
    "0.7965 0.7948 0.7915 0.7878",
    "seed 1": "1.0000 0.9920 0.9901 0.9894 0.9849 0.9838 0.9820 0.9800 0.9775 0.9682 0.9582 "
    "0.9489 0.9420 0.9388 0.9321 0.9236 0.9170 0.9128 0.9109 0.9079 0.9022 0.9000 0.8970 "
    "0.8946 0.8920 0.8764 0.8728 0.8709 0.8684 0.8620 0.8549 0.8490 0.8439 0.8433 0.8405 "
    "0.8385 0.8357 0.8355 0.8302 0.8262 0.8214 0.8202 0.8158 0.8127 0.8106 0.8091 0.8053 "
    "0.8013 0.7932 0.7824 0.7802",
    "seed 2": "1.0000 0.9953 0.9928 0.9913 0.9894 0.9878 0.9820 0.9800 0.9794 0.9715 0.9586 "
    "0.9555 0.9497 0.9482 0.9380 0.9365 0.9334 0.9232 0.9147 0.9123 0.9091 0.9035 0.9008 "
    "0.8979 0.8962 0.8958 0.8882 0.8852 0.8718 0.8673 0.8620 0.8564 0.8549 0.8535 0.8526 "
    "0.8399 0.8382 0.8375 0.8313 0.8303 0.8266 0.8224 0.8182 0.8150 0.8084 0.8063 0.8023 "
    "0.8015 0.7964 0.7948 0.7921",
    "MKL reproducible mode": "1.0000 0.9929 0.9907 0.9900 0.9862 0.9842 0.9832 0.9803 0.9756 "
    "0.9695 0.9557 0.9504 0.9460 0.9420 0.9360 0.9342 0.9325 0.9184 0.9149 0.9101 0.9057 "
    "0.9045 0.9018 0.8987 0.8961 0.8941 0.8907 0.8868 0.8671 0.8642 0.8585 0.8529 0.8517 "
    "0.8454 0.8410 0.8403 0.8369 0.8300 0.8273 0.8266 0.8261 0.8249 0.8179 0.8162 0.8130 "
    "0.8111 0.8074 0.8005 0.7936 0.7857 0.7815",
}


def test_mode_count_is_stable_where_the_largest_eigengap_jumped():
    counts, jumps = [], []
    for text in DIGITS_SPECTRA.values():
        values = np.array(text.split(), dtype=np.float64)
        k, how = count_modes(values)
        counts.append(k)
        assert how == "slow modes"
        walk = values**3  # the previous count: the largest drop of the 3-step walk's spectrum
        jumps.append(int(np.argmax(walk[:-1] - walk[1:])) + 1)
    assert jumps == [14, 25, 10, 28]  # flagged 42 %, 51 %, 38 % and 52 % of adjacent pairs
    assert counts == [12, 11, 12, 12]  # flagged 40.3-41.5 % (docs/singular.md)


def test_mode_count_levels():
    # Escape rates 1 - lambda of a spectrum with four slow modes above a continuum.
    escape = np.concatenate([[0.0, 0.002, 0.004, 0.006], np.linspace(0.08, 0.5, 47)])
    assert count_modes(1 - escape) == (4, "slow modes")
    # More data: every escape rate falls, the contrast with the finest structure stays.
    assert count_modes(1 - escape / 8)[0] == 4
    # A spectrum resolving little (a small set): the absolute level decides.
    coarse = np.array([0.0, 0.03, 0.045, 0.07, 0.9])
    assert count_modes(1 - coarse)[0] == 3
    assert 1 / MODE_STEPS == pytest.approx(0.05)
    # Separate components each give an eigenvalue 1; with nothing else slow, they are K.
    assert count_modes(1 - np.r_[0.0, 0.0, 0.0, np.linspace(0.3, 0.6, 10)], 3) == (
        3,
        "components",
    )
    assert count_modes(np.array([1.0])) == (1, "slow modes")


def test_a_distant_cluster_does_not_hide_the_structure_of_the_others():
    # Three touching modes and one far away: two graph components, four modes.
    rng = np.random.default_rng(0)
    centres = [(0, 0, 0, 0), (4.5, 0, 0, 0), (0, 4.5, 0, 0), (40, 0, 0, 0)]
    y, label = _blobs(rng, centres, 200, 1.0)
    e = diffusion_embedding(y)
    assert e.n_clusters == 4 and e.chosen_by == "slow modes"
    assert _purity(e.clusters, label) > 0.97


def test_halves_of_a_low_dimensional_mode_are_not_modes():
    # Two Gaussian modes 3 sigma apart in 3D: the walk also stays long in halves of each mode
    # (6 slow eigenvalues), but leaves the modes themselves 3.6 times more slowly.
    y, label = _blobs(np.random.default_rng(1), [(0, 0, 0), (3, 0, 0)], 600, 1.0)
    e = diffusion_embedding(y - y.mean(0))
    assert e.n_clusters == 2 and e.chosen_by == "separation" and e.separation > 3
    assert _purity(e.clusters, label) > 0.9


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


def _twelve_modes(draw: int, n: int = 1100) -> np.ndarray:
    # Twelve Gaussian modes of different widths in 8D, some touching: the same layout for
    # every draw, a new sample each (as autoencoders trained on two machines give slightly
    # different latents). Above 1,000 targets: the sparse eigensolver and its start vector.
    layout = np.random.default_rng(0)
    centres, widths = 2.4 * layout.standard_normal((12, 8)), layout.uniform(0.6, 1.4, 12)
    rng = np.random.default_rng(draw)
    label = rng.integers(12, size=n)
    return centres[label] + widths[label, None] * rng.standard_normal((n, 8))


@pytest.mark.slow
def test_default_rule_flags_the_same_share_across_seeds_threads_precision_and_samples():
    y = _twelve_modes(0)
    adj = _adjacency(_knn_pairs(y, 30))
    runs = [find_singular_set(y, adj, seed=seed) for seed in range(5)]
    with threadpool_limits(limits=2, user_api="blas"):
        runs.append(find_singular_set(y, adj))
    runs.append(find_singular_set(y.astype(np.float32), adj))
    runs.append(
        find_singular_set(y * (1 + 1e-6 * np.random.default_rng(9).standard_normal(y.shape)), adj)
    )
    for draw in (1, 2):
        other = _twelve_modes(draw)
        runs.append(find_singular_set(other, _adjacency(_knn_pairs(other, 30))))
    shares = [s.n_singular / s.n_pairs for s in runs]
    clusters = [s.clusters for s in runs]
    assert all(s.frame == "diffusion" for s in runs)
    assert max(shares) - min(shares) <= 0.04, shares  # the same share within +-2 points
    assert max(clusters) - min(clusters) <= 2 and min(clusters) >= 9, clusters
