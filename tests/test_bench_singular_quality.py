"""The singular-set quality benchmark on two labelled clusters, where every answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.singular_quality import (
    Case,
    _cell_medians,
    fit_heights,
    judge,
    markdown,
    parse_args,
    spectrum_figures,
)


def _two_clusters(tmp_path: Path) -> tuple[Case, object]:
    rng = np.random.default_rng(3)
    points = np.vstack(
        [rng.normal((-3.0, 0.0), 0.3, (15, 2)), rng.normal((3.0, 0.0), 0.3, (15, 2))]
    )
    args = parse_args(["--paths", "6", "--steps", "17", "--mix-samples", "3000"])
    problem, heights, info = fit_heights(args, points, tmp_path / "ot.npz")
    assert info["converged"]
    _, _, again = fit_heights(args, points, tmp_path / "ot.npz")
    assert again["reused"]
    labels = np.empty(problem.n_targets, dtype=np.int64)
    labels[problem.inverse] = [0] * 15 + [1] * 15

    def side(z: np.ndarray) -> np.ndarray:
        return (z[:, 0] > 0).astype(np.int64)

    case = Case(
        name="clusters",
        targets=problem.targets,
        labels=labels,
        heights=heights,
        labeler=side,
        info={},
    )
    return case, args


def test_judge_two_clusters_scores_every_rule(tmp_path: Path) -> None:
    case, args = _two_clusters(tmp_path)
    rows = judge(case, args, {"dataset": "clusters"})
    head, rules = rows[0], {r["rule"]: r for r in rows[1:]}
    assert 0 < head["different_share"] < 0.5
    assert head["auc"]["angle (valley frame)"] == 1.0
    assert head["auc"]["angle (standard frame)"] == 1.0
    assert head["auc"]["diffusion distance"] == 1.0
    default = rules["default"]
    assert default["chosen"] == "gap" and default["clusters"] == 2
    assert default["precision"] == 1.0 and default["recall"] == 1.0
    assert default["mixing"] == 0.0 and default["foreign_weight"] == 0.0
    # Paths between random pairs: every change of side is a reported crossing, and back.
    assert default["changes_at_crossings"] == 1.0 and default["crossings_without_change"] == 0.0
    assert default["label_changes"] == default["crossings"] > 0
    table = markdown(rows)
    assert "| angle (valley frame) | 1.000 |" in table
    assert "| diffusion distance | 1.000 |" in table
    assert "| clusters | default: diffusion frame, gap, 2 clusters, blend margin 0.35 |" in table
    # T~ adds new codes (novelty > 0); with a clear gap the blend margin removes none of them.
    margins = [r for name, r in rules.items() if name.startswith("default")]
    assert sorted(r["blend_margin"] for r in margins) == [0.35, 0.4, 0.5, 0.7, 1.0]
    assert default["novelty"] > 0.05
    assert all(r["novelty"] == default["novelty"] for r in margins)


def test_cell_medians() -> None:
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    got = _cell_medians(4, pairs, np.array([1.0, 3.0, 5.0]))
    np.testing.assert_allclose(got, [2.0, 3.0, 4.0, 3.0])  # cell 3 has no pair: overall median


def test_spectrum_figures_of_two_overlapping_modes() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(0.0, 1.0, (600, 4))
    y[300:, 0] += 4.0  # two modes 4 sigma apart along one axis
    labels = np.repeat([0, 1], 300)
    got = spectrum_figures(y, labels, seed=0)
    assert got["clusters"] == 2 and got["cluster_purity"] > 0.97
    assert 0 < got["different_share"] < 0.05
    assert got["auc_diffusion"] > got["auc_latent_distance"] > 0.5
