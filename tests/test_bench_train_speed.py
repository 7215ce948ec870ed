"""bench/train_speed.py: the arms take turns over one window and are scaled to the recipe."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from bench import train_speed


@pytest.mark.slow  # the full-size conv autoencoder, eight times
def test_arms_alternate_and_the_summary_scales_to_the_recipe(monkeypatch, capsys, tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "tiny.npz"
    np.savez(images, images=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8))
    argv = [str(images), "--window", "128", "--rounds", "2", "--threads", "1"]
    argv += ["--arms", "previous,recipe", "--profile", "1"]
    monkeypatch.setattr(sys, "argv", ["train_speed.py", *argv])
    train_speed.main()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [r["kind"] for r in lines]
    assert kinds == ["setup"] + ["profile"] * 2 + ["window"] * 4 + ["summary"] * 2 + ["end"]
    setup = lines[0]
    assert setup["window_images"] == 128 and set(setup["arms"]) == {"previous", "recipe"}
    assert setup["arms"]["previous"] == {"batch_size": 128, "lr": 3e-3, "precision": "float32"}
    for profile in lines[1:3]:
        assert set(profile["ms_per_step"]) >= {"forward", "backward", "optimizer"}
        assert all(v >= 0 for v in profile["ms_per_step"].values())
    assert [r["arm"] for r in lines[3:7]] == ["previous", "recipe"] * 2  # taking turns
    previous, recipe = lines[7:9]
    scale = 60_000 / 128
    joint, decoder = setup["recipe_epochs"]
    windows = [r for r in lines[3:7] if r["arm"] == "recipe"]
    median_joint = np.median([r["joint_seconds"] for r in windows]) * scale
    assert abs(recipe["joint_epoch_seconds"] - median_joint) <= 0.01 * median_joint + 0.1
    minutes = (
        joint * recipe["joint_epoch_seconds"] + decoder * recipe["decoder_epoch_seconds"]
    ) / 60
    assert abs(recipe["full_recipe_minutes"] - minutes) <= 0.1 + 0.01 * minutes
    assert previous["speedup"] == 1.0 and len(recipe["speedup_per_round"]) == 2
    assert recipe["speedup"] > 0
