"""bench/decoder_schedule.py: every decoder phase starts from the same frozen encoder."""

from __future__ import annotations

import json
import sys

import pytest

from bench import decoder_schedule
from models import TrainPlan, dataset_config_for, load_plan_data
from models.train import train_autoencoder


def _run(monkeypatch, capsys, *args: str) -> list[dict]:
    monkeypatch.setattr(sys, "argv", ["decoder_schedule.py", *args])
    decoder_schedule.main()
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_schedules_branch_from_one_joint_phase(monkeypatch, capsys, tmp_path):
    joint = tmp_path / "joint.pt"
    args = ("--subset", "96", "--epochs", "2", "--decoder-epochs", "1,2")
    lines = _run(monkeypatch, capsys, *args, "--joint-checkpoint", str(joint))
    assert [r["kind"] for r in lines] == ["setup", "joint"] + ["decoder_phase"] * 4 + ["summary"]
    rows = lines[2:6]
    assert [(r["schedule"], r["decoder_epochs"]) for r in rows] == [
        ("constant", 1),
        ("cosine", 1),
        ("constant", 2),
        ("cosine", 2),
    ]
    assert len({r["l2_before_freeze"] for r in rows}) == 1  # one encoder for all
    assert lines[1]["l2_before_freeze"] == rows[0]["l2_before_freeze"]
    # One step per epoch here: the cosine's first step is the constant's, its second is half.
    assert rows[0]["l2_after_freeze"] == rows[1]["l2_after_freeze"]
    assert rows[2]["l2_after_freeze"] != rows[3]["l2_after_freeze"]
    assert all(len(r["epoch_losses"]) == r["decoder_epochs"] for r in rows)
    # A second run reuses the joint phase and takes the same decoder steps.
    again = _run(
        monkeypatch, capsys, *args, "--schedules", "cosine", "--joint-checkpoint", str(joint)
    )
    assert again[1] == {"kind": "joint", "reused": str(joint)}
    assert [r["l2_after_freeze"] for r in again[2:4]] == [
        rows[1]["l2_after_freeze"],
        rows[3]["l2_after_freeze"],
    ]


def test_a_checkpoint_from_mid_training_is_refused(monkeypatch, capsys, tmp_path):
    plan = TrainPlan(data=dataset_config_for("digits"), subset=96, epochs=3, device="cpu")
    images = load_plan_data(plan)
    model_config, config = plan.resolve(images.image_shape)
    joint = tmp_path / "mid.pt"
    train_autoencoder(images, model_config, config, checkpoint=joint, callback=lambda r: False)
    with pytest.raises(ValueError, match="not a checkpoint taken when the encoder froze"):
        _run(
            monkeypatch, capsys, "--subset", "96", "--epochs", "3", "--joint-checkpoint", str(joint)
        )
