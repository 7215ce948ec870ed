"""Exact power diagrams in 2D and 3D against an oracle that clips every cell by ALL N targets."""

import numpy as np
import pytest
from oracles import halfspace_cells, laguerre_areas

from solver.cells.polygons import power_cells
from solver.cells.power_diagram import power_diagram

# Measures are sums of float64 products of unit-scale numbers.
ATOL = 1e-12


def clustered(rng, n, d, centres=4, spread=0.03):
    c = rng.uniform(-0.35, 0.35, (centres, d))
    return c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))


def check_against_oracle(y, h, low=-0.5):
    diagram = power_diagram(y, h, low=low, high=low + 1.0)
    volumes, centroids = halfspace_cells(y, h, low=low)
    np.testing.assert_allclose(diagram.cell_measures, volumes, rtol=0, atol=ATOL)
    assert diagram.cell_measures.sum() == pytest.approx(1.0, abs=1e-12)
    full = volumes > 1e-9
    np.testing.assert_allclose(diagram.centroids[full], centroids[full], rtol=0, atol=1e-9)
    assert np.isnan(diagram.centroids[diagram.cell_measures == 0]).all()
    return diagram


@pytest.mark.parametrize("d", [2, 3])
def test_uniform_targets_match_the_oracle(rng, d):
    y = rng.uniform(-0.5, 0.5, (40, d))
    check_against_oracle(y, 0.02 * rng.standard_normal(40))


@pytest.mark.parametrize("d", [2, 3])
def test_clustered_targets_with_empty_cells_match_the_oracle(rng, d):
    y = clustered(rng, 40, d)
    diagram = check_against_oracle(y, 0.01 * rng.standard_normal(40))
    assert diagram.empty_cells > 0  # random heights on clusters leave cells empty


def test_two_dimensional_areas_match_the_polygon_oracle(rng):
    y = rng.uniform(-0.6, 0.6, (60, 2))
    h = -0.5 * np.square(y).sum(axis=1) + 0.01 * rng.standard_normal(60)
    diagram = power_diagram(y, h)
    np.testing.assert_allclose(diagram.cell_measures, laguerre_areas(y, h), rtol=0, atol=ATOL)


def test_colinear_targets_in_2d_are_slabs():
    t = np.linspace(-0.4, 0.4, 7)
    y = np.stack([t, 0.5 * t], axis=1)  # flat input: Qhull refuses the lifted points
    h = -0.5 * np.square(y).sum(axis=1)
    diagram = check_against_oracle(y, h)
    assert diagram.empty_cells == 0
    # Consecutive targets only are adjacent (slabs along the line).
    np.testing.assert_array_equal(diagram.pairs, np.stack([np.arange(6), np.arange(1, 7)], 1))


def test_coplanar_targets_in_3d_match_the_oracle(rng):
    uv = rng.uniform(-0.5, 0.5, (25, 2))
    y = np.c_[uv, 0.3 * uv[:, 0] - 0.2 * uv[:, 1]]
    check_against_oracle(y, 0.01 * rng.standard_normal(25))


def test_heights_affine_in_the_targets_leave_only_hull_vertices(rng):
    # Lifted points are flat in R^(d+1) too: only the targets' convex hull vertices win.
    y = rng.uniform(-0.5, 0.5, (20, 2))
    check_against_oracle(y, y @ np.array([0.3, -0.1]) + 0.2)


@pytest.mark.parametrize("d", [2, 3])
def test_near_duplicate_targets_keep_their_thin_cells(rng, d):
    y = rng.uniform(-0.4, 0.4, (20, d))
    y[1] = y[0] + 1e-7 * rng.standard_normal(d)
    h = -0.5 * np.square(y).sum(axis=1)
    diagram = check_against_oracle(y, h)
    assert diagram.cell_measures[0] > 0 and diagram.cell_measures[1] > 0


@pytest.mark.parametrize("d", [2, 3])
def test_unit_cube_domain(rng, d):
    y = rng.uniform(0.0, 1.0, (30, d))
    check_against_oracle(y, 0.01 * rng.standard_normal(30), low=0.0)


def test_symmetric_facets_have_known_measures():
    # Voronoi cells of a 3 x 3 grid in the square: facets of length 1/3.
    g = (np.arange(3) - 1) / 3.0
    y = np.array([(a, b) for a in g for b in g])
    diagram = power_diagram(y, -0.5 * np.square(y).sum(axis=1))
    np.testing.assert_allclose(diagram.cell_measures, 1 / 9, atol=ATOL)
    assert len(diagram.pairs) == 12  # diagonal neighbours touch at a point only
    np.testing.assert_allclose(diagram.facet_measures, 1 / 3, atol=ATOL)
    # Two targets in 3D: the facet is the square x = 0 of area 1.
    two = power_diagram(np.array([[-0.2, 0.0, 0.0], [0.2, 0.0, 0.0]]), np.zeros(2))
    np.testing.assert_allclose(two.facet_measures, [1.0], atol=ATOL)
    np.testing.assert_allclose(two.centroids, [[-0.25, 0, 0], [0.25, 0, 0]], atol=ATOL)


def test_2d_facets_match_the_polygon_edges(rng):
    y = rng.uniform(-0.5, 0.5, (30, 2))
    h = 0.01 * rng.standard_normal(30)
    diagram = power_diagram(y, h)
    lengths = {}
    for cell in power_cells(y, h):
        v = cell.vertices
        for k, j in enumerate(cell.neighbours):
            if j > cell.index:
                lengths[(cell.index, int(j))] = np.linalg.norm(v[(k + 1) % len(v)] - v[k])
    found = {
        tuple(p): m for p, m in zip(diagram.pairs.tolist(), diagram.facet_measures, strict=True)
    }
    assert found.keys() == {p for p, m in lengths.items() if m > 1e-12}
    for pair, m in found.items():
        assert m == pytest.approx(lengths[pair], abs=ATOL)


@pytest.mark.parametrize("d", [2, 3])
def test_facets_are_the_derivatives_of_cell_measures(rng, d):
    # dw_i / dh_j = -|facet_ij| / |y_i - y_j|: finite differences of the exact measures.
    y = rng.uniform(-0.5, 0.5, (25, d))
    h = -0.5 * np.square(y).sum(axis=1)
    diagram = power_diagram(y, h)
    step = 1e-6
    for (i, j), facet in zip(diagram.pairs[:10], diagram.facet_measures[:10], strict=True):
        up, down = h.copy(), h.copy()
        up[j] += step
        down[j] -= step
        slope = (
            power_diagram(y, up).cell_measures[i] - power_diagram(y, down).cell_measures[i]
        ) / (2 * step)
        assert slope == pytest.approx(-facet / np.linalg.norm(y[i] - y[j]), abs=1e-6)


def test_one_target_fills_the_cube():
    diagram = power_diagram(np.array([[0.3, -0.2, 0.1]]), np.zeros(1))
    np.testing.assert_allclose(diagram.cell_measures, [1.0], atol=ATOL)
    np.testing.assert_allclose(diagram.centroids, [[0.0, 0.0, 0.0]], atol=ATOL)
    assert diagram.pairs.shape == (0, 2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        power_diagram(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="heights"):
        power_diagram(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        power_diagram(np.array([[0.0, np.nan]]), np.zeros(1))
    with pytest.raises(ValueError, match="side 1"):
        power_diagram(np.zeros((1, 2)), np.zeros(1), low=0.0, high=2.0)
