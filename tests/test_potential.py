"""The solver's Potential: one index per build, exact save/load, verified reading, old files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import solver.potential.extended_map as extended_map_module
import solver.potential.potential as potential_module
from solver import (
    CellIndex,
    FixedThreshold,
    PassSpec,
    Potential,
    PotentialConfig,
    PotentialFormatError,
    accuracy,
    check_accuracy,
    derive_seed,
    estimate,
    make_problem,
)

# Three targets on a line with h = -|y|^2 / 2: a Voronoi diagram of strips whose measures are
# known exactly (1/4, 1/2, 1/4 of the centred unit square); the weights match them, so these
# heights are the optimum and only Monte Carlo noise separates w from v.
TARGETS = np.array([[-0.5, 0.0], [0.0, 0.0], [0.5, 0.0]])
WEIGHTS = np.array([0.25, 0.5, 0.25])
HEIGHTS = -0.5 * (TARGETS**2).sum(axis=1)
CONFIG = PotentialConfig(samples_per_cell=2000, check_samples_per_cell=2000)


@pytest.fixture(scope="module")
def built():
    # Duplicated rows: the problem merges them and the potential keeps the inverse map.
    problem = make_problem(np.vstack([TARGETS, TARGETS[:1]]), np.array([0.125, 0.5, 0.25, 0.125]))
    return problem, Potential.build(problem, HEIGHTS, seed=3, config=CONFIG, backend="torch")


def test_build_measures_and_maps_the_known_diagram(built):
    problem, pot = built
    np.testing.assert_array_equal(pot.inverse, [0, 1, 2, 0])
    np.testing.assert_allclose(pot.heights, HEIGHTS)
    np.testing.assert_array_equal(pot.targets, problem.targets)
    np.testing.assert_allclose(problem.weights, WEIGHTS)
    # Heights at the optimum: L1 within a few noise floors, no empty cell.
    assert pot.accuracy.empty_cells == 0 and pot.accuracy.n_samples == 6000
    assert pot.accuracy.l1 < 3 * pot.accuracy.noise_floor
    np.testing.assert_array_equal(pot.singular_set.pairs, [[0, 1], [1, 2]])
    np.testing.assert_allclose(pot.extended_map.mass_centres[:, 0], [-0.375, 0, 0.375], atol=0.01)


def test_cell_labels_take_the_majority_and_mark_empty_cells(built):
    _, pot = built  # inverse [0, 1, 2, 0]: cell 0 holds rows 0 and 3
    assert pot.cell_labels(np.array([2, 5, 1, 2])).tolist() == [2, 5, 1]
    assert pot.cell_labels(np.array([1, 0, 4, 0])).tolist() == [0, 0, 4]  # tie 0/1 -> 0
    with pytest.raises(ValueError, match="differ"):
        pot.cell_labels(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=">= 0"):
        pot.cell_labels(np.array([1, -2, 3, 0]))


@pytest.mark.parametrize("extended", [True, False])
def test_samples_from_chosen_cells_stay_in_them(built, extended):
    _, pot = built
    ext = pot.extended_map
    only_left = np.array([True, False, False])
    # The left strip's samples all map to its target, blended or not: no neighbour is allowed.
    z = ext.sample(50, seed=4, extended=extended, cells=only_left)
    np.testing.assert_array_equal(z, np.repeat(TARGETS[:1], 50, axis=0).astype(np.float32))
    # Two cells: T~ blends y_0 and y_1 only, never y_2 (x stays in [-0.5, 0]).
    left_two = np.array([True, True, False])
    z = ext.sample(200, seed=4, extended=extended, cells=left_two)
    assert z.shape == (200, 2) and (z[:, 0] <= 1e-6).all() and (z[:, 0] >= -0.5 - 1e-6).all()
    assert (z[:, 0] < -0.25).any() and (z[:, 0] > -0.25).any()  # both cells are drawn
    np.testing.assert_array_equal(
        z, ext.sample(200, seed=4, extended=extended, cells=left_two)
    )  # same seed, same output
    pages = [
        ext.sample(m, seed=4, extended=extended, cells=left_two, start=a)
        for a, m in ((0, 70), (70, 70), (140, 60))
    ]
    np.testing.assert_array_equal(np.concatenate(pages), z)  # pages from offsets: the whole
    assert ext.sample(0, seed=4, extended=extended, cells=left_two).shape == (0, 2)


def test_samples_from_chosen_cells_refuse_bad_masks_and_too_many_draws(built):
    ext = built[1].extended_map
    with pytest.raises(ValueError, match="bool mask of shape"):
        ext.sample(5, seed=0, cells=np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="selects no cell"):
        ext.sample(5, seed=0, cells=np.zeros(3, bool))
    # The left strip holds a quarter of the cube: 10,000 samples need ~40,000 draws.
    with pytest.raises(ValueError, match="need more than 20000 draws"):
        ext.sample(10_000, seed=0, cells=np.array([True, False, False]), max_draws=20_000)


def test_accuracy_is_measured_on_an_independent_stream():
    # Off-optimum heights move the facets off dyadic positions, so counts vary with the samples.
    problem, h = make_problem(TARGETS, WEIGHTS), HEIGHTS + np.array([0.013, 0.0, -0.007])
    pot = Potential.build(problem, h, seed=3, config=CONFIG, backend="torch")
    index = CellIndex(problem.targets, h, backend="torch")
    seed = derive_seed(3, potential_module.CHECK_STREAM)
    est = estimate(index, PassSpec(source=problem.source, n_samples=6000, seed=seed, k=1))
    assert pot.accuracy == accuracy(est.counts, 6000, problem.weights)
    again = check_accuracy(problem, h, n_samples=6000, seed=3, backend="torch")
    assert again == pot.accuracy  # stream 0 of the check is the stream build measures on
    other = check_accuracy(problem, h, n_samples=6000, seed=3, stream=1, backend="torch")
    assert other.l1 != pot.accuracy.l1  # other samples, other counts
    given = Potential.build(problem, h, seed=3, config=CONFIG, accuracy=other)
    assert given.accuracy is other


def test_build_makes_one_cell_index(monkeypatch):
    made = []

    class Counting(CellIndex):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    for module in (potential_module, extended_map_module):
        monkeypatch.setattr(module, "CellIndex", Counting)
    Potential.build(make_problem(TARGETS, WEIGHTS), HEIGHTS, seed=0, config=CONFIG)
    assert len(made) == 1


def test_save_load_round_trip_is_exact(built, tmp_path):
    _, pot = built
    pot.save(tmp_path / "p.npz")
    back = Potential.load(tmp_path / "p.npz", backend="torch")
    assert back.accuracy == pot.accuracy
    np.testing.assert_array_equal(back.heights, pot.heights)
    np.testing.assert_array_equal(back.inverse, pot.inverse)
    np.testing.assert_array_equal(back.extended_map.sample(300, 5), pot.extended_map.sample(300, 5))
    s, t = back.singular_set, pot.singular_set
    assert (s.rule, s.threshold, s.reason, s.frame) == (t.rule, t.threshold, t.reason, t.frame)
    np.testing.assert_array_equal(s.angles, t.angles)
    assert t.frame == "valley" and t.radii.shape == (3,)  # 3 targets: one spectral cluster
    np.testing.assert_array_equal(s.radii, t.radii)
    with np.load(tmp_path / "p.npz") as z:
        assert sum(key.endswith("heights") for key in z.files) == 1  # written once


def test_round_trip_keeps_the_diffusion_coordinates(tmp_path):
    # Two groups of targets: two spectral clusters, so the default scores in the diffusion frame.
    rng = np.random.default_rng(0)
    y = np.vstack([rng.normal(-0.3, 0.03, (12, 2)), rng.normal(0.3, 0.03, (12, 2))])
    problem = make_problem(y)
    pot = Potential.build(problem, -0.5 * (y**2).sum(1), seed=1, config=CONFIG)
    pot.save(tmp_path / "p.npz")
    back = Potential.load(tmp_path / "p.npz")
    s, t = back.singular_set, pot.singular_set
    assert t.frame == s.frame == "diffusion" and t.clusters == s.clusters == 2
    assert t.embedding.shape == (24, 1)
    np.testing.assert_array_equal(s.embedding, t.embedding)
    # Pairs the pass never saw (a crossing's) score the same from the file's coordinates.
    far = np.array([[0, 23], [1, 2]])
    np.testing.assert_array_equal(s.pair_angles(back.targets, far), t.pair_angles(y, far))


@pytest.mark.parametrize("frame", ["valley", "standard"])
def test_round_trip_keeps_each_frames_own_data(built, tmp_path, frame):
    problem, _ = built
    config = PotentialConfig(samples_per_cell=200, check_samples_per_cell=200, frame=frame)
    pot = Potential.build(problem, HEIGHTS, seed=3, config=config, backend="torch")
    pot.save(tmp_path / "p.npz")
    s, t = Potential.load(tmp_path / "p.npz", backend="torch").singular_set, pot.singular_set
    assert s.frame == t.frame == frame and s.embedding.size == 0
    np.testing.assert_array_equal(s.radii, t.radii)
    assert s.radii.shape == ((3,) if frame == "valley" else (0,))


def _rewrite(path, tmp_path, change):
    with np.load(path) as z:
        arrays = {key: z[key] for key in z.files}
    change(arrays)
    out = tmp_path / "changed.npz"
    np.savez(out, **arrays)
    return out


def _meta(arrays, **changes):
    meta = json.loads(str(arrays["meta"].item()))
    meta.update(changes)
    arrays["meta"] = np.array(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("angles"), "missing entries \\['angles'\\]"),
        (lambda a: a.pop("meta"), "no metadata"),
        (lambda a: a.update(heights=np.zeros(5)), "heights has shape \\(5,\\)"),
        (lambda a: a.update(heights=np.array([0.0, np.nan, 0.0])), "heights contain NaN"),
        (lambda a: a.update(inverse=np.array([0, 7])), "inverse must be"),
        (lambda a: a.update(pairs=np.array([[0, 9], [1, 2]])), "pairs must index"),
        (lambda a: _meta(a, version=3), "version 3; this build reads"),
        (lambda a: _meta(a, format="other"), "format 'other'"),
        (lambda a: _meta(a, rule={"rule": "median"}), "rule must be one of"),
    ],
)
def test_load_verifies_the_file(built, tmp_path, change, message):
    _, pot = built
    pot.save(tmp_path / "p.npz")
    with pytest.raises(PotentialFormatError, match=message):
        Potential.load(_rewrite(tmp_path / "p.npz", tmp_path, change))


def test_load_rejects_torn_and_foreign_files(tmp_path):
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(PotentialFormatError, match="not a potential file"):
        Potential.load(tmp_path / "torn.npz")
    with pytest.raises(FileNotFoundError):
        Potential.load(tmp_path / "missing.npz")
    assert issubclass(PotentialFormatError, ValueError)


def _version_1_bytes(pot: Potential) -> bytes:
    """A potential as the service wrote it before the solver owned the format."""
    ext, s, adj = pot.extended_map, pot.singular_set, pot.extended_map.adjacency
    rule = s.rule
    param = getattr(rule, "q", getattr(rule, "min_regular", float("nan")))
    arrays = {
        "targets": ext.targets,
        "heights": ext.heights,
        "pairs": adj.pairs,
        "pair_counts": adj.counts,
        "facet_measures": adj.facet_measures,
        "n_samples": np.array(adj.n_samples),
        "angles": s.angles,
        "singular": s.singular,
        "threshold": np.array(s.threshold),
        "rule": np.array(rule.name),
        "frame": np.array(s.frame),
        "quantile": np.array(param),
        "gap_ratio": np.array(s.gap_ratio),
        "mass_centres": ext.mass_centres,
        "centre_counts": ext.centre_counts,
        "k": np.array(ext.k),
        "power": np.array(ext.power),
        "domain": np.array(ext.source.domain),
        "sampler": np.array(ext.source.sampler),
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        **{f"map_{key}": value for key, value in arrays.items()},
        heights=ext.heights,
        inverse=pot.inverse,
        meta=np.array(json.dumps({"format": "aeot-potential/1", "model": "m", "iteration": 3})),
    )
    return buf.getvalue()


def test_blend_margin_round_trips_and_older_files_blend_every_regular_facet(built, tmp_path):
    problem, _ = built
    config = PotentialConfig(samples_per_cell=500, blend_margin=0.25)
    pot = Potential.build(problem, HEIGHTS, seed=3, config=config, backend="torch")
    assert pot.extended_map.blend_margin == 0.25
    pot.save(tmp_path / "p.npz")
    assert Potential.load(tmp_path / "p.npz", backend="torch").extended_map.blend_margin == 0.25

    def drop_margin(arrays):
        meta = json.loads(str(arrays["meta"].item()))
        del meta["blend_margin"]
        arrays["meta"] = np.array(json.dumps(meta))

    old = Potential.load(_rewrite(tmp_path / "p.npz", tmp_path, drop_margin), backend="torch")
    assert old.extended_map.blend_margin == 1.0


def test_version_1_files_still_load(tmp_path):
    problem = make_problem(TARGETS, WEIGHTS)
    # Version 1 had no blend margin: its maps blended across every regular facet.
    config = PotentialConfig(
        samples_per_cell=500, rule=FixedThreshold(radians=0.3), blend_margin=1.0
    )
    pot = Potential.build(problem, HEIGHTS, seed=1, config=config, backend="torch")
    (tmp_path / "v1.npz").write_bytes(_version_1_bytes(pot))
    old = Potential.load(tmp_path / "v1.npz", backend="torch")
    assert old.accuracy is None  # version 1 kept the check in the catalogue only
    assert old.extended_map.blend_margin == 1.0
    assert old.singular_set.rule == FixedThreshold(radians=0.3)
    np.testing.assert_array_equal(old.extended_map.sample(200, 4), pot.extended_map.sample(200, 4))


def test_bad_heights_and_configs():
    problem = make_problem(TARGETS, WEIGHTS)
    with pytest.raises(ValueError, match="heights must be finite with shape \\(3,\\)"):
        Potential.build(problem, np.zeros(2), seed=0)
    with pytest.raises(ValueError, match="n_samples"):
        check_accuracy(problem, HEIGHTS, n_samples=0, seed=0)
    for bad, message in [
        ({"samples_per_cell": 0}, "samples_per_cell"),
        ({"frame": "polar"}, "frame"),
        ({"power": -1.0}, "power"),
        ({"blend_margin": 0.0}, "blend_margin"),
        ({"blend_margin": 1.5}, "blend_margin"),
        ({"blend_margin": float("nan")}, "blend_margin"),
    ]:
        with pytest.raises(ValueError, match=message):
            PotentialConfig(**bad)
    config = PotentialConfig(rule=FixedThreshold(radians=0.5), k=2)
    assert PotentialConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bad potential config"):
        PotentialConfig.from_dict({"samples": 3})
