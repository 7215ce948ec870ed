"""The image-quality benchmark's helpers (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.image_quality import markdown, save_grid


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


def test_fit_ot_gives_an_extended_map_and_reuses_its_heights(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    from bench.image_quality import fit_ot, parse_args

    args = parse_args(["--ot-target-l1", "0.1", "--ot-time-budget", "60", "--reuse"])
    latents = rng.normal(size=(60, 4)).astype(np.float32)
    ext, info = fit_ot(args, latents, tmp_path / "ot.npz")
    assert info["converged"] and info["singular"]["pairs"] > 0 and "reused" not in info
    out = ext.sample(100, seed=0)
    assert out.shape == (100, 4) and np.isfinite(out).all()
    again, info2 = fit_ot(args, latents, tmp_path / "ot.npz")
    assert info2["reused"] and info2["l1"] == info["l1"]
    np.testing.assert_array_equal(again.heights, ext.heights)
    _, info3 = fit_ot(args, latents[::-1].copy() + 1, tmp_path / "ot.npz")  # other latents
    assert "reused" not in info3
