"""The pure map T, the extended map T~, interpolation and the 2D pictures, on two clusters.

Two clusters of targets far apart in 2D: the OT map must jump between them (singular facets
exactly where cells of different clusters meet), T~ must blend only within a cluster, and a
segment from one cluster's cell to the other's must cross exactly one singular facet.
"""

import io

import numpy as np
import pytest
from oracles import laguerre_areas
from PIL import Image
from scipy.spatial import Delaunay

from solver import (
    DEFAULT_BLEND_MARGIN,
    FitConfig,
    FixedThreshold,
    build_extended_map,
    find_singular_set,
    fit,
    make_problem,
)
from solver.cells.polygons import BOUNDARY, power_cells
from solver.plots import power_diagram_png, samples_png

PER_CLUSTER = 20


@pytest.fixture(scope="module")
def clusters():
    rng = np.random.default_rng(7)
    a = rng.normal((-3.0, 0.0), 0.3, (PER_CLUSTER, 2))
    b = rng.normal((3.0, 0.5), 0.3, (PER_CLUSTER, 2))
    problem = make_problem(np.vstack([a, b]))
    result = fit(problem, FitConfig(target_l1=0.02, seed=0))
    assert result.converged
    ext = build_extended_map(problem.targets, result.heights, n_samples=50_000, seed=1)
    # problem.inverse maps the original rows to the merged targets (a permutation here).
    label = np.empty(len(problem.targets), dtype=int)
    label[problem.inverse] = [0] * PER_CLUSTER + [1] * PER_CLUSTER
    return problem, result, ext, label


def test_singular_facets_exactly_between_the_clusters(clusters):
    _, _, ext, label = clusters
    s = ext.singular_set
    across = label[s.pairs[:, 0]] != label[s.pairs[:, 1]]
    assert across.any() and (~across).any()
    np.testing.assert_array_equal(s.singular, across)
    assert s.rule.name == "gap" and s.gap_ratio > 2


def test_pure_map_returns_training_latents_only(clusters):
    problem, _, ext, _ = clusters
    z = ext.source.sample(5000, 3)
    latents, cells = ext.pure(z)
    np.testing.assert_array_equal(latents, problem.targets[cells])
    np.testing.assert_array_equal(ext.sample(5000, 3, extended=False), latents)


def test_extended_samples_stay_in_their_cluster_hulls_and_are_new(clusters):
    problem, _, ext, label = clusters
    x = ext.sample(20000, 11)
    inside = np.zeros(len(x), dtype=bool)
    for c in (0, 1):
        # tol: blends of two hull vertices lie on the hull's edge, up to float32 rounding.
        inside |= Delaunay(problem.targets[label == c]).find_simplex(x, tol=1e-5) >= 0
    assert inside.all(), f"{(~inside).sum()} samples left the clusters' convex hulls"
    assert not (np.abs(x[:, 0]) < 1.0).any()  # nothing in the gap between the clusters
    dist = np.linalg.norm(x[:, None, :] - problem.targets[None], axis=2).min(axis=1)
    assert (dist > 1e-3).mean() > 0.5  # mostly new codes, not copies of training latents


def test_every_target_cell_receives_generated_mass(clusters):
    problem, _, ext, _ = clusters
    z = ext.source.sample(20000, 5)
    cells, w = ext.blend_weights(z)
    mass = np.zeros(problem.n_targets)
    np.add.at(mass, cells.ravel(), w.ravel())
    assert (mass > 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def _with_margin(ext, margin, singular_set=None):
    """The same pass (and singular set unless given), blending with another margin."""
    return ext.replace(singular_set=singular_set, blend_margin=margin)


def _blended(ext, z):
    """Pairs (top cell, neighbour) that get blending weight at some z; checks the weights."""
    cells, w = ext.blend_weights(z)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    top = np.broadcast_to(cells[:, :1], cells.shape)
    used = (w > 0) & (cells != top)
    return {(int(a), int(b)) for a, b in zip(top[used], cells[used], strict=True)}


def test_blend_margin_keeps_only_neighbours_well_below_the_threshold(clusters):
    _, _, ext, _ = clusters
    z = ext.source.sample(20000, 6)
    # Standard-frame angles: within a cluster they spread, so a margin has pairs to drop.
    s = find_singular_set(ext.targets, ext.adjacency, frame="standard")
    median = float(np.median(s.angles[~s.singular]) / s.threshold)
    blended = {}
    for margin in (1.0, 0.5, median):
        pairs = _blended(_with_margin(ext, margin, s), z)
        row = s.lookup(*np.array(sorted(pairs)).T)
        assert (row >= 0).all() and not s.singular[row].any()
        assert (s.angles[row] <= margin * s.threshold).all()
        blended[margin] = pairs
    assert blended[median] < blended[0.5] <= blended[1.0]
    # Margin 1 blends every observed regular pair between cells with centres.
    cells, _ = _with_margin(ext, 1.0, s).blend_weights(z)
    top, others = np.broadcast_to(cells[:, :1], cells[:, 1:].shape), cells[:, 1:]
    ok = s.is_admissible(top, others) & np.isfinite(ext.mass_centres[others]).all(axis=2)
    assert {(int(a), int(b)) for a, b in zip(top[ok], others[ok], strict=True)} == blended[1.0]


def test_with_a_clear_gap_the_default_margin_changes_nothing(clusters):
    # In the default (diffusion) frame the clusters are separate components: every regular
    # score lies far below the default margin's share of the threshold.
    _, _, ext, _ = clusters
    z = ext.source.sample(20000, 6)
    assert ext.blend_margin == DEFAULT_BLEND_MARGIN == 0.35
    assert _blended(ext, z) == _blended(_with_margin(ext, 1.0), z)


@pytest.mark.parametrize("margin", [0.0, -0.5, 1.01, float("nan")])
def test_blend_margin_outside_0_1_is_refused(clusters, margin):
    problem, result, ext, _ = clusters
    with pytest.raises(ValueError, match="blend_margin"):
        _with_margin(ext, margin)
    with pytest.raises(ValueError, match="blend_margin"):
        build_extended_map(
            problem.targets, result.heights, n_samples=100, seed=1, blend_margin=margin
        )


def test_sample_is_seeded_and_not_capped_by_n(clusters):
    problem, _, ext, _ = clusters
    n = 3 * problem.n_targets + 7
    a, b = ext.sample(n, 4, batch_size=50), ext.sample(n, 4)
    assert a.shape == (n, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ext.sample(n, 5))
    # Pages from consecutive starts are the whole, bit for bit (the service's paging).
    pages = [ext.sample(min(40, n - lo), 4, start=lo) for lo in range(0, n, 40)]
    np.testing.assert_array_equal(np.concatenate(pages), b)


def test_segment_between_clusters_crosses_one_singular_facet(clusters):
    _, _, ext, label = clusters
    i, j = int(np.flatnonzero(label == 0)[0]), int(np.flatnonzero(label == 1)[0])
    path = ext.interpolate_indices(i, j, steps=33)
    assert len(path.crossings) == 1
    c = path.crossings[0]
    assert label[c.from_cell] == 0 and label[c.to_cell] == 1 and 0 < c.t < 1
    assert c.angle > ext.singular_set.threshold
    # The cells along the path switch cluster once, between the frames either side of t.
    switch = np.flatnonzero(np.diff(label[path.cells]))
    assert len(switch) == 1 and path.t[switch[0]] <= c.t <= path.t[switch[0] + 1]
    np.testing.assert_allclose(path.z[0], ext.mass_centres[i], atol=1e-6)
    # Within one cluster: no crossing.
    k = int(np.flatnonzero(label == 0)[-1])
    assert ext.interpolate_indices(i, k, steps=5).crossings == ()


def test_crossing_angles_match_the_pass_in_every_frame(clusters):
    problem, result, _, label = clusters
    i, j = int(np.flatnonzero(label == 0)[0]), int(np.flatnonzero(label == 1)[0])
    for frame in ("raw", "standard", "valley"):
        ext = build_extended_map(
            problem.targets, result.heights, n_samples=20_000, seed=1, frame=frame
        )
        (c,) = ext.interpolate_indices(i, j, steps=9).crossings
        row = int(ext.singular_set.lookup(c.from_cell, c.to_cell))
        assert row >= 0  # the pass saw this facet: the crossing's angle is the set's
        assert c.angle == pytest.approx(ext.singular_set.angles[row], rel=1e-9)
        assert ext.singular_set.singular[row] and label[c.from_cell] != label[c.to_cell]


def test_cells_without_samples_map_to_their_own_target():
    # Cell 1 is empty with h = 0 (its plane lies below the other two everywhere).
    y = np.array([[-0.5, 0.0], [0.0, 0.0], [0.5, 0.0]])
    ext = build_extended_map(
        y, np.zeros(3), n_samples=2000, seed=0, rule=FixedThreshold(radians=0.5)
    )
    assert not ext.has_centre[1] and ext.centre_counts[1] == 0
    assert np.isfinite(ext.sample(100, 1)).all()
    with pytest.raises(ValueError, match="no mass centre"):
        ext.interpolate_indices(0, 1, steps=3)


def test_bad_inputs(clusters):
    _, _, ext, _ = clusters
    with pytest.raises(ValueError, match="shape"):
        ext.extended(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        ext.pure(np.full((1, 2), np.nan))
    with pytest.raises(ValueError, match="source cube"):
        ext.interpolate(np.zeros(2), np.array([0.7, 0.0]), 4)
    with pytest.raises(ValueError, match="steps"):
        ext.interpolate(np.zeros(2), np.zeros(2), 1)
    with pytest.raises(ValueError, match="n and start must be"):
        ext.sample(-1, 0)
    with pytest.raises(ValueError, match="cell in"):
        ext.interpolate_indices(0, 10_000, 3)
    with pytest.raises(ValueError, match="n_samples"):
        build_extended_map(np.eye(2), np.zeros(2), n_samples=0, seed=0)


def test_exact_power_cells_match_the_oracle(clusters, rng):
    problem, result, ext, _ = clusters
    cells = power_cells(problem.targets, result.heights, pairs=ext.adjacency.pairs)
    np.testing.assert_allclose(
        [c.area for c in cells], laguerre_areas(problem.targets, result.heights), atol=1e-12
    )
    # Without the Monte Carlo pairs as hints the vertex check alone finds every neighbour.
    y, h = rng.normal(size=(30, 2)), 0.1 * rng.normal(size=30)
    got = [c.area for c in power_cells(y, h)]
    np.testing.assert_allclose(got, laguerre_areas(y, h), atol=1e-12)
    # Edge labels: every interior edge of i names a j whose edge names i back.
    for c in power_cells(y, h):
        for j in c.neighbours[c.neighbours != BOUNDARY]:
            assert c.index in power_cells(y, h)[j].neighbours


def test_pictures_are_pngs(clusters):
    problem, _, ext, _ = clusters
    real, fake = problem.targets, ext.sample(50, 0)
    for png in (power_diagram_png(ext, size_px=200), samples_png(real, fake)):
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size[0] >= 200
    with pytest.raises(ValueError, match="2D"):
        y = np.random.default_rng(0).normal(size=(10, 3))
        power_diagram_png(build_extended_map(y, np.zeros(10), n_samples=500, seed=0))
