"""The CI guard on skipped tests (tests/ci_skips.py), run on a small suite in a real pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
import pytest

def test_passes():
    pass

@pytest.mark.skip(reason="needs CUDA")
def test_on_a_gpu():
    pass

def test_with_an_optional_library():
    pytest.skip("somelib not installed")
"""


def _pytest(tmp_path: Path, ci: bool, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "--disable-plugin-autoload",
        "-p",
        "tests.ci_skips",
    ]
    return subprocess.run(
        [*cmd, *args, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "workers", [[], ["-p", "xdist.plugin", "-n", "2"]], ids=["serial", "xdist"]
)
def test_a_non_hardware_skip_fails_under_ci(tmp_path, workers):
    (tmp_path / "test_suite.py").write_text(SUITE)
    done = _pytest(tmp_path, True, *workers)
    assert done.returncode == 1, done.stdout
    assert "test_with_an_optional_library: somelib not installed" in done.stdout
    assert "test_on_a_gpu" not in done.stdout.split("only CUDA and AMX")[-1]
    assert _pytest(tmp_path, False, *workers).returncode == 0  # outside CI: a plain skip


def test_hardware_skips_pass_under_ci(tmp_path):
    suite = SUITE.split("def test_with_an_optional_library")[0]
    (tmp_path / "test_suite.py").write_text(suite)
    done = _pytest(tmp_path, True)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 skipped" in done.stdout
