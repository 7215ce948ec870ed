"""The client install: what ``pip install aeot`` brings, and the client working with only that.

The fast tests run the command line here with the server's packages made unimportable; the
slow one builds the wheel and sdist with ``python -m build``, installs the wheel into a fresh
virtual environment (base install, then the ``client`` extra) and drives a live server from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service_helpers import (
    API_KEY,
    ROOT,
    copy_store,
    labelled_template,
    live_server,
    make_settings,
    write_bundle,
)

# What the client install must not hold: the server's packages (typer brings pydantic).
SERVER_MODULES = (
    "torch",
    "faiss",
    "scipy",
    "sklearn",
    "fastapi",
    "uvicorn",
    "starlette",
    "pydantic_settings",
    "lazy_loader",
    "safetensors",
    "matplotlib",
    "tqdm",
    "triton",
)
# ... nor, in the base install, the typed results' packages (the `client` extra).
ARRAY_MODULES = ("numpy", "PIL")


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=;\[ ]", r)[0].lower() for r in requirements}


def test_the_base_install_is_the_client_and_the_extras_add_the_server():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _requirement_names(project["dependencies"]) == {"httpx", "typer"}
    extras = project["optional-dependencies"]
    assert _requirement_names(extras["client"]) == {"numpy", "pillow"}
    server = _requirement_names(extras["server"])
    assert {"aeot", "torch", "scipy", "fastapi", "uvicorn", "pydantic-settings"} <= server
    assert "aeot[client]" in extras["server"]
    for extra, faiss in (("cpu", "faiss-cpu"), ("gpu", "faiss-gpu-cu12")):
        assert "aeot[server]" in extras[extra] and faiss in _requirement_names(extras[extra])
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "Typing :: Typed" in project["classifiers"]
    for package in ("service", "solver", "models"):
        assert (ROOT / package / "py.typed").is_file()


# Runs the command line with the listed modules made unimportable, as on the client install.
_BLOCKED_CLI = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))
    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Absent())
    from service.cli import app
    import service.client
    app(sys.argv[2:], prog_name="aeot")
    """
)


def _light_cli(*args: str, arrays: bool = False) -> subprocess.CompletedProcess[str]:
    blocked = SERVER_MODULES if arrays else SERVER_MODULES + ARRAY_MODULES
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED_CLI, ",".join(blocked), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_server_packages_the_client_commands_load_and_server_ones_say_what_to_install():
    listing = _light_cli("--help")
    assert listing.returncode == 0, listing.stderr
    assert "sample" in listing.stdout and "(needs the server install)" in listing.stdout
    for command in ("serve", "worker", "fit", "train", "demo", "store rebuild"):
        run = _light_cli(*command.split(), "--port", "9000", "extra-argument")
        assert run.returncode == 1
        (line,) = run.stderr.splitlines()
        assert line.startswith(f"error: `aeot {command}` runs the server, which this install")
        assert line.endswith("pip install 'aeot[cpu]' (or 'aeot[gpu]' on a CUDA host)")
    unreachable = _light_cli("models", "list", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1
    assert unreachable.stderr.splitlines() == [
        "error: no server at http://127.0.0.1:9: start it with `aeot serve` (or pass --url)"
    ]
    # `models train` builds its options from models.options (standard library) and checks them
    remote = _light_cli("models", "train", "m", "mnist", "--image-size", "2x2")
    assert remote.returncode == 1
    assert remote.stderr.splitlines() == [
        "error: --image-size must be (H, W) with H, W >= 4, got (2, 2)"
    ]
    npy = _light_cli("sample", "out.npy", "--url", "http://127.0.0.1:9")
    assert npy.returncode == 1
    assert npy.stderr.splitlines() == [
        "error: latent arrays need numpy, which this install lacks: pip install 'aeot[client]'"
    ]


# ----------------------------------------------------------------------------- the wheel


def _pip(env_python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This environment's pip, installing into the environment of ``env_python``."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env_python), "install", "-q", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )


def _sources(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied to ``dest``: the build
    writes its egg-info beside the sources, and other tests build from the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _build(source: Path, outdir: Path, *what: str, env: dict[str, str] | None = None) -> list[Path]:
    """``python -m build`` (the dev extra carries its requirements, so no isolation)."""
    run = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", *what, "--outdir", str(outdir)]
        + [str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return sorted(outdir.iterdir())


def _kernels(wheel: Path) -> set[str]:
    """The compiled modules in ``wheel`` (``_simd``: search; ``_laguerre``: exact cells)."""
    names = zipfile.ZipFile(wheel).namelist()
    return {m.group(1) for n in names if (m := re.fullmatch(r"solver/cells/(_\w+)\..*\.so", n))}


# Run in the client's environment: which modules it can import, and where `service` is from.
_PROBE = (
    "import importlib.util as u, json, sys, service.client, service.cli; "
    "print(json.dumps({'found': [m for m in sys.argv[1].split(',') if u.find_spec(m)], "
    "'service': service.client.__file__}))"
)

# The Python client in the client's environment (with the `client` extra): every result typed.
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import httpx, numpy as np
    from PIL import Image
    from service.client import AEOTClient, AEOTError

    url, key, expected_path, dead_url, out = sys.argv[1:6]
    found = {}
    with AEOTClient(url, api_key=key) as client:
        client.wait_ready(timeout=60, interval=0.1)
        found["limit"] = client.sample_limit()
        latents = client.sample(150, seed=7)
        found["paged_equal"] = bool(np.array_equal(latents, np.load(expected_path)))
        found["pages"] = [p.latents.shape[0] for p in client.iter_samples(150, seed=7)]
        grid = client.sample_images(9, seed=1)
        found["grid"] = [isinstance(grid, Image.Image), grid.size[0]]
        path = client.interpolate(0, 45, steps=12)
        found["crossings"] = len(path.crossings)
        found["strip"] = isinstance(path.strip, Image.Image)
        found["latents"] = list(path.latents.shape)
        found["singular"] = client.singularities(limit=3)["n_singular"]
        found["models"] = [m["name"] for m in client.models()["models"]]
        found["refit"] = client.refit("lab", target_l1=0.5)["status"]
    with AEOTClient(url, api_key="wrong-key") as client:
        try:
            client.refit("lab")
        except AEOTError as exc:
            found["wrong_key"] = [exc.status_code, exc.detail]
    with AEOTClient(dead_url, timeout=5) as client:
        try:
            client.models()
        except httpx.ConnectError as exc:
            found["unreachable"] = type(exc).__name__
    with open(out, "w") as f:
        json.dump(found, f)
    """
)


@pytest.mark.slow
def test_the_wheel_installs_the_client_alone_which_drives_a_live_server(tmp_path, tmp_path_factory):
    """Build, install the client into a fresh venv (no torch, no faiss) and use it.

    PyPI (or the pip cache) provides the client's dependencies; under ``CI=true`` a failed
    install fails the test, elsewhere an unreachable index skips it.
    """
    dist = tmp_path / "dist"
    built = _build(_sources(tmp_path / "src"), dist)
    (sdist,) = [p for p in built if p.name.endswith(".tar.gz")]
    (wheel,) = [p for p in built if p.suffix == ".whl"]
    assert sdist.name == "aeot-0.1.0.tar.gz" and wheel.name.startswith("aeot-0.1.0-")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    for member in (
        "LICENSE",
        "pyproject.toml",
        "setup.py",
        "solver/cells/_simd.c",
        "solver/cells/_laguerre.c",
    ):
        assert f"aeot-0.1.0/{member}" in names, member
    wheel_names = zipfile.ZipFile(wheel).namelist()
    for member in ("service/py.typed", "solver/py.typed", "aeot-0.1.0.dist-info/licenses/LICENSE"):
        assert member in wheel_names, member
    metadata = zipfile.ZipFile(wheel).read("aeot-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata and "Provides-Extra: server" in metadata
    if shutil.which("gcc") or os.environ.get("CI") == "true":
        assert _kernels(wheel) == {"_simd", "_laguerre"}
    # Without a C compiler the sdist still builds a wheel, without the kernels (FAISS and the
    # numpy diagram serve instead).
    (plain,) = _build(sdist, tmp_path / "plain", "--wheel", env={"CC": "false"})
    assert _kernels(plain) == set()

    env = tmp_path / "client-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    install = _pip(python, str(wheel))
    if install.returncode != 0 and os.environ.get("CI") != "true":
        pytest.skip(f"the package index is not reachable here: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr[-3000:]

    def in_env(*args: str) -> subprocess.CompletedProcess[str]:
        """A command of the client's environment, away from the checkout."""
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AEOT_URL")}
        return subprocess.run(
            list(args), cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
        )

    absent = ",".join(SERVER_MODULES + ARRAY_MODULES)
    probe = json.loads(in_env(str(python), "-c", _PROBE, absent).stdout)
    assert probe["found"] == [] and probe["service"].startswith(str(env))

    store = copy_store(labelled_template(tmp_path_factory.getbasetemp()), tmp_path / "store")
    settings = make_settings(store.root, default_model="lab", max_n=64)
    with TestClient(create_app(make_settings(store.root, default_model="lab"))) as local:
        one_answer = local.get("/sample", params={"n": 150, "seed": 7, "format": "npy"})
    expected = tmp_path / "expected.npy"
    expected.write_bytes(one_answer.content)
    bundle = write_bundle(tmp_path / "upload", n=30, d=3)
    aeot = str(env / "bin" / "aeot")
    # A port held bound but never listening refuses connections, and no server (the live one
    # below included) can take it while the test runs: free_port() could hand both the same.
    with socket.socket() as held, live_server(settings) as url:
        held.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{held.getsockname()[1]}"
        run = in_env(aeot, "sample", "grid.png", "--n", "9", "--seed", "1", "--url", url)
        assert run.returncode == 0, run.stderr
        assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        run = in_env(aeot, "sample", "latents.json", "--n", "150", "--seed", "7", "--url", url)
        assert run.returncode == 0, run.stderr
        answer = json.loads((tmp_path / "latents.json").read_text())
        rows = np.asarray(answer["latents"], np.float32)
        np.testing.assert_array_equal(rows, np.load(expected))  # 3 pages = one answer
        assert answer["model"] == "lab" and answer["seed"] == 7
        run = in_env(aeot, "interpolate", "0", "45", "--steps", "12", "--url", url)
        assert run.returncode == 0, run.stderr
        assert "crossing at t=" in run.stdout and (tmp_path / "interpolation.png").is_file()
        run = in_env(aeot, "singularities", "--png", "singular.png", "--url", url)
        assert run.returncode == 0 and "adjacent pairs singular" in run.stdout, run.stderr
        assert (tmp_path / "singular.png").read_bytes()[:4] == b"\x89PNG"
        run = in_env(aeot, "models", "register", str(bundle), "--url", url, "--api-key", API_KEY)
        assert run.returncode == 0 and "registered upload" in run.stdout, run.stderr
        run = in_env(aeot, "models", "list", "--url", url)
        assert run.returncode == 0 and "lab" in run.stdout and "upload" in run.stdout
        run = in_env(aeot, "models", "delete", "upload", "-y", "--url", url, "--api-key", "no")
        assert run.returncode == 1
        (line,) = run.stderr.splitlines()
        assert line.startswith("error: ") and "--api-key" in line
        run = in_env(aeot, "models", "list", "--url", dead)
        assert run.returncode == 1
        assert run.stderr.splitlines() == [
            f"error: no server at {dead}: start it with `aeot serve` (or pass --url)"
        ]
        run = in_env(aeot, "serve")
        assert run.returncode == 1 and "pip install 'aeot[cpu]'" in run.stderr

        # The `client` extra adds numpy and pillow: the Python client's typed results.
        extra = _pip(python, f"{wheel}[client]")
        assert extra.returncode == 0, extra.stderr[-3000:]
        probe = json.loads(in_env(str(python), "-c", _PROBE, ",".join(SERVER_MODULES)).stdout)
        assert probe["found"] == []
        out = tmp_path / "found.json"
        run = in_env(str(python), "-c", _SCRIPT, url, API_KEY, str(expected), dead, str(out))
        assert run.returncode == 0, run.stderr
    found = json.loads(out.read_text())
    assert found["limit"] == 64 and found["pages"] == [64, 64, 22] and found["paged_equal"]
    assert found["grid"][0] and found["grid"][1] > 3 * 8
    assert found["crossings"] >= 1 and found["strip"] and found["latents"] == [12, 3]
    assert found["singular"] >= 1 and found["models"] == ["lab", "upload"]
    assert found["refit"] == "queued"
    assert found["wrong_key"][0] in (401, 403) and found["unreachable"] == "ConnectError"
