"""bench/time_to_model.py: a real ``aeot serve --data`` from an empty store to a sample."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from bench import time_to_model


@pytest.mark.slow  # a real server process trains, fits and serves
def test_milestones_come_in_order(monkeypatch, capsys, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "blobs.npz"
    np.savez(data, images=rng.random((64, 8, 8)).astype(np.float32))
    argv = [str(data), "--subset", "48", "--epochs", "2", "--timeout", "600"]
    monkeypatch.setattr(sys, "argv", ["time_to_model.py", *argv])
    time_to_model.main()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["kind"] == "setup" and "--subset 48 --epochs 2" in lines[0]["command"]
    result = lines[-1]
    assert result["kind"] == "result"
    marks = [result[f"seconds_to_{m}"] for m in ("server", "trained", "ready", "sample")]
    assert marks == sorted(marks) and marks[0] > 0
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert all(r["n_images"] == 48 for r in epochs)
    assert [r["epoch"] for r in epochs] == sorted({r["epoch"] for r in epochs})
