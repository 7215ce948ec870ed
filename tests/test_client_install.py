"""The client install: what ``pip install aeot`` brings, and the client working with only that.

The fast tests run the command line here with the server's packages made unimportable; the
slow one builds the wheel and sdist with ``python -m build``, installs the wheel into a fresh
virtual environment (base install, then the ``client`` extra) and drives a live server from it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib

from tests.service_helpers import ROOT

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
    for command in ("serve", "worker", "fit", "train", "demo"):
        run = _light_cli(command, "--port", "9000", "extra-argument")
        assert run.returncode == 1
        (line,) = run.stderr.splitlines()
        assert line.startswith(f"error: `aeot {command}` runs the server, which this install")
        assert line.endswith("pip install 'aeot[cpu]' (or 'aeot[gpu]' on a CUDA host)")
    unreachable = _light_cli("models", "list", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1
    assert unreachable.stderr.splitlines() == [
        "error: no server at http://127.0.0.1:9: start it with `aeot serve` (or pass --url)"
    ]
    npy = _light_cli("sample", "out.npy", "--url", "http://127.0.0.1:9")
    assert npy.returncode == 1
    assert npy.stderr.splitlines() == [
        "error: latent arrays need numpy, which this install lacks: pip install 'aeot[client]'"
    ]
