"""bench/train_speed.py: the arms take turns over one window and are scaled to the recipe."""

from __future__ import annotations

import contextlib
import json
import sys

import numpy as np
import pytest

from bench import train_speed
from models.runtime import retained_heap


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
    for window in lines[3:7]:
        assert window["system_seconds"] >= 0 and window["page_faults"] >= 0
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


def test_the_glibc_heap_arm_trains_without_the_retained_heap(monkeypatch):
    from models import train

    seen = []
    monkeypatch.setattr(
        train_speed, "todays_trainer", lambda *a: seen.append(train.retained_heap) or (1.0, 2.0)
    )
    run, config = train_speed.arm_config("recipe-glibc-heap", train_speed.TrainConfig())
    assert run(None, None, config, False) == (1.0, 2.0)
    assert seen == [contextlib.nullcontext]
    assert train.retained_heap is retained_heap  # put back
