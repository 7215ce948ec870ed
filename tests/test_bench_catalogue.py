"""bench/catalogue.py: every row runs on a tiny store and the rebuild keeps every version."""

from __future__ import annotations

import json
import sys

from bench import catalogue


def test_rows_on_a_tiny_store(monkeypatch, capsys, tmp_path):
    args = ["--dir", str(tmp_path), "--writes", "3", "--read-seconds", "0", "--jobs", "10"]
    args += ["--models", "2", "--potentials", "3", "--n", "60", "--d", "2"]
    monkeypatch.setattr(sys, "argv", ["catalogue.py", *args])
    catalogue.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in rows] == ["machine", "write", "write", "check", "rebuild"]
    assert [r["journal"] for r in rows[1:3]] == ["delete", "wal"]
    assert rows[3]["jobs"] == 10 and rows[3]["p50_ms"] > 0
    assert rows[4]["models"] == 2 and len(rows[4]["seconds"]) == 3
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone
