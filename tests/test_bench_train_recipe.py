"""bench/train_recipe.py: variants of a recipe on the same images, resumable, with bundles."""

from __future__ import annotations

import json
import sys

import pytest

from bench import train_recipe
from models import TrainConfig, load_bundle


def _run(monkeypatch, capsys, *args: str) -> list[dict]:
    monkeypatch.setattr(sys, "argv", ["train_recipe.py", *args])
    train_recipe.main()
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_variants_train_side_by_side_and_a_rerun_reuses_them(monkeypatch, capsys, tmp_path):
    args = ("digits", "--subset", "96", "--epochs", "2", "--decoder-epochs", "1")
    args += ("--variants", "recipe,paper", "--out", str(tmp_path))
    lines = _run(monkeypatch, capsys, *args)
    results = {r["variant"]: r for r in lines if r["kind"] == "result"}
    assert set(results) == {"recipe", "paper"}
    assert all((r["joint_epochs"], r["decoder_epochs"]) == (2, 1) for r in results.values())
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["variant"] for r in epochs] == ["recipe"] * 3 + ["paper"] * 3
    summary = lines[-1]
    assert summary["ratio_to_first"]["recipe"] == 1.0 and summary["ratio_to_paper"] is None
    bundle = load_bundle(tmp_path / "bundle-digits-paper")
    assert bundle.metrics is not None
    assert bundle.metrics.l2_after_freeze == results["paper"]["l2_after_freeze"]
    again = _run(monkeypatch, capsys, *args)  # finished checkpoints: nothing trains again
    assert not [r for r in again if r["kind"] == "epoch"]
    assert [r["l2_after_freeze"] for r in again if r["kind"] == "result"] == [
        results["recipe"]["l2_after_freeze"],
        results["paper"]["l2_after_freeze"],
    ]


def test_the_paper_variant_is_the_previous_trainer_recipe():
    paper = train_recipe.variant_config("paper", TrainConfig(batch_size=256, precision="auto"))
    assert (paper.batch_size, paper.lr, paper.precision) == (128, 3e-3, "float32")
    assert (paper.joint_schedule, paper.decoder_schedule) == ("constant", "constant")
    with pytest.raises(ValueError, match="unknown variant"):
        train_recipe.variant_config("fast", TrainConfig())
