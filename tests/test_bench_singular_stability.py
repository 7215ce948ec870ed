"""The singular-set stability benchmark's measures on two labelled modes (known answers)."""

from __future__ import annotations

import numpy as np

from bench.singular_stability import judge, previous_count, summary
from solver import nearest_neighbours


def _two_modes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.vstack(
        [rng.normal((0, 0, 0, 0), 1.0, (300, 4)), rng.normal((6, 0, 0, 0), 1.0, (300, 4))]
    )
    labels = np.repeat([0, 1], 300)
    near = nearest_neighbours(y, y, 9)[:, 1:]
    pairs = np.sort(np.stack([np.repeat(np.arange(600), 8), near.ravel()], 1), 1)
    return y, np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0), labels


def test_judge_scores_the_default_rule_and_the_previous_count() -> None:
    y, pairs, labels = _two_modes()
    row = judge(y, pairs, labels)
    assert row["clusters"] == 2 and row["frame"] == "diffusion"
    assert row["precision"] > 0.9 and row["recall"] > 0.9 and row["auc"] > 0.99
    assert 0 < row["flagged"] < 0.05 and 0 < row["different_share"] < 0.05
    assert row["previous"]["clusters"] == 2 and row["previous"]["flagged"] == row["flagged"]


def test_previous_count_is_the_largest_drop_of_the_three_step_walk() -> None:
    values = np.array([1.0, 0.99, 0.98, 0.6, 0.58])  # cubes drop most after the third
    assert previous_count(values) == 3


def test_summary_gives_each_figure_s_range() -> None:
    rows = [
        {
            "clusters": k,
            "flagged": f,
            "precision": 0.9,
            "recall": 0.9,
            "auc": 0.97,
            "different_share": 0.41,
            "previous": {"clusters": k + 2, "flagged": f, "precision": 0.8, "recall": 0.9},
        }
        for k, f in ((11, 0.40), (12, 0.42))
    ]
    out = summary(rows)
    assert out["clusters"] == [11, 12] and out["flagged"] == [0.4, 0.42]
    assert out["previous_clusters"] == [13, 14] and out["variants"] == 2
