"""Every benchmark script starts by the command its docs give.

The docs run the scripts by path from the repository root (``python bench/NAME.py``), where
Python puts ``bench/`` first on ``sys.path``: a module there named like one of the project's
packages would be imported in its place (``bench/solver.py`` once broke ``bench/gpu.py`` so).
Each cited command is run with ``--help`` exactly as written, in a fresh interpreter.
"""

import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
FIND = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
PACKAGES = {p.rstrip("*") for p in FIND["find"]["include"]}
SCRIPTS = sorted(
    [p.stem for p in BENCH.glob("*.py") if "__main__" in p.read_text()]
    + [p.stem for p in BENCH.glob("*.sh")]
)
# `python bench/NAME.py`, `python -m bench.NAME` or `bash bench/NAME.sh`, as the docs write them.
COMMAND = re.compile(r"(?:python3? (?:(bench/\w+\.py)|-m (bench\.\w+))|bash (bench/\w+\.sh))")


def cited_commands() -> dict[str, set[tuple[str, ...]]]:
    """Script name -> the command forms that README, docs/ and bench/ docstrings give for it."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(BENCH.glob("*.*"))]
    found: dict[str, set[tuple[str, ...]]] = {}
    for path in texts:
        for by_path, by_module, shell in COMMAND.findall(path.read_text()):
            if by_path:
                found.setdefault(Path(by_path).stem, set()).add((sys.executable, by_path))
            elif by_module:
                found.setdefault(by_module.split(".")[1], set()).add(
                    (sys.executable, "-m", by_module)
                )
            else:
                found.setdefault(Path(shell).stem, set()).add(("bash", shell))
    return found


CITED = cited_commands()
FORMS = sorted({form for forms in CITED.values() for form in forms})


def test_no_bench_module_shadows_a_package():
    modules = {p.stem for p in BENCH.glob("*.py")}
    assert PACKAGES == {"solver", "models", "service"}
    assert not modules & PACKAGES


def test_every_script_is_cited_and_every_citation_is_a_script():
    assert SCRIPTS, "no benchmark scripts found"
    assert sorted(CITED) == SCRIPTS


@pytest.fixture(scope="module")
def help_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Every cited command with ``--help``, run side by side (each imports torch)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(form: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*form, "--help"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(FORMS, pool.map(run, FORMS), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS, ids=lambda form: " ".join(form[1:]))
def test_cited_command_starts(form, help_runs):
    result = help_runs[form]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: "), result.stdout[:500]
