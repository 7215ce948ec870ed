"""The image-quality benchmark's pure-map stand-in and helpers (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.image_quality import PureMap, markdown, save_grid


def test_pure_map_returns_targets_with_their_cell_measures() -> None:
    # Four targets on the diagonals, h = 0: the cells are the quadrants, 1/4 of the cube each.
    targets = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.float32) * 0.25
    latents = PureMap(targets, np.zeros(4)).sample(4000, seed=0, extended=False)
    assert latents.shape == (4000, 2)
    rows = (latents[:, None, :] == targets[None]).all(axis=2)
    assert rows.sum(axis=1).tolist() == [1] * 4000
    np.testing.assert_allclose(rows.mean(axis=0), 0.25, atol=0.03)
    with pytest.raises(NotImplementedError, match="extended"):
        PureMap(targets, np.zeros(4)).sample(10, seed=0, extended=True)


def test_save_grid_and_table(tmp_path: Path, rng: np.random.Generator) -> None:
    save_grid(rng.random((7, 1, 8, 8)).astype(np.float32), tmp_path / "g.png", side=3, zoom=2)
    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (3 * 9 * 2, 3 * 9 * 2)
    metrics = {
        "classifier_fid": 1.0,
        "precision": 0.5,
        "recall": 0.25,
        "class_kl": 0.01,
        "nn_median": 3.0,
        "nn_ratio": 1.1,
    }
    rows = [
        {"dataset": "d", "sampler": "s", "metrics": metrics},
        {"dataset": "d", "sampler": "t", "metrics": None, "status": "skipped: x"},
    ]
    table = markdown(rows)
    assert "| d | s | 1.00 | 0.500 | 0.250 | 0.0100 | 3.00 (1.10) |" in table
    assert "skipped: x" in table
