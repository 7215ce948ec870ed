"""Helpers of the service tests: tiny bundles, fitted stores, settings, a live uvicorn server."""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.autoencoder import Autoencoder, AutoencoderConfig
from models.bundle import save_bundle
from service.settings import Settings
from service.store import ModelStore
from service.worker import Worker

API_KEY = "test-key-123"
ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def tiny_latents(n: int = 200, d: int = 4, seed: int = 0) -> np.ndarray:
    """``n`` latents in 5 clusters in ``d`` dimensions, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, d))
    return (centres[rng.integers(0, 5, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


def write_bundle(path: Path, n: int = 200, d: int = 4, seed: int = 0) -> Path:
    """A real bundle: an untrained 8x8 MLP autoencoder (safetensors) and hand-made latents."""
    torch.manual_seed(seed)
    config = AutoencoderConfig(arch="mlp", image_shape=(1, 8, 8), latent_dim=d, mlp_hidden=(16,))
    save_bundle(path, model=Autoencoder(config), latents=tiny_latents(n, d, seed), dataset="tiny")
    return path


def bundle_archive(path: Path) -> bytes:
    """A bundle directory as ``.tar.gz`` bytes (the upload format)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(path, arcname="bundle")
    return buf.getvalue()


def make_settings(store: Path, **overrides: object) -> Settings:
    """Settings for tests: temp store, loose fit, fast polls, no embedded training."""
    values: dict[str, object] = {
        "store": store,
        "api_key": API_KEY,
        "worker": False,
        "embedded_default": False,
        "default_model": "tiny",
        "target_l1": 0.1,
        "poll_interval": 0.05,
        "publish_interval": 0.5,
        "checkpoint_every": 2,
        "stale_seconds": 5.0,
        "check_samples_per_cell": 32,
        "map_samples_per_cell": 32,
        "device": "cpu",
        # Loopback names plus the in-process clients' names (TestClient, ASGITransport).
        "allowed_hosts": ("127.0.0.1", "localhost", "testserver", "test"),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def fit_store(
    root: Path, name: str = "tiny", n: int = 200, d: int = 4, **overrides: object
) -> ModelStore:
    """A store with one registered model whose fit ran to the end in this process
    (``overrides``: settings of that fit, e.g. ``publish_interval``)."""
    store = ModelStore(root)
    store.register(name, write_bundle(root.parent / f"bundle-{name}", n=n, d=d))
    Worker(store, make_settings(root, **overrides)).run(idle_exit=True)
    return store


def copy_store(template: Path, dest: Path) -> ModelStore:
    """A private copy of a fitted template store (fast: no refit per test)."""
    shutil.copytree(template, dest)
    return ModelStore(dest)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(settings: Settings) -> dict[str, str]:
    """Environment of a subprocess running with ``settings`` from this checkout."""
    env = {**os.environ, **settings.to_env()}
    env["AEOT_STORE"] = str(Path(settings.store).resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


@contextmanager
def live_server(
    settings: Settings,
    # Generous: a server (two processes with AEOT_WEB_WORKERS=2) imports torch first, which took
    # over 60 s on the 2-core box at load 20; a server that never starts still fails.
    timeout: float = 180.0,
    procs: list[subprocess.Popen[bytes]] | None = None,
    quiet: bool = False,
) -> Iterator[str]:
    """Run ``aeot serve`` as a real uvicorn process on 127.0.0.1; yields its base URL.

    ``procs``, when given, receives the server's ``Popen`` (to inspect its child processes);
    ``quiet`` sends the server's standard output (its banner) to /dev/null.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    stdout = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, env=env_for(settings), cwd=ROOT, stdout=stdout)
    if procs is not None:
        procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited early"
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise TimeoutError("server did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (bounded loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


_TEMPLATES: dict[tuple[str, int, int], Path] = {}


def fitted_template(base: Path, name: str = "tiny", n: int = 200, d: int = 4) -> Path:
    """A fitted store made once per test session (callers copy it with :func:`copy_store`).

    Every check of its fit may publish (no publication interval), so the store holds the same
    several versions on any machine, however fast its fit ran.
    """
    key = (name, n, d)
    if key not in _TEMPLATES:
        root = base / f"template-{name}-{n}x{d}" / "store"
        fit_store(root, name, n, d, publish_interval=0.0)
        _TEMPLATES[key] = root
    return _TEMPLATES[key]


def child_commands(pid: int) -> list[str]:
    """Command lines of the direct children of process ``pid`` (Linux ``/proc``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return out


LABELLED_CENTRES = np.array(
    [[-3.0, -3.0, 0.0], [3.0, -3.0, 0.0], [0.0, 3.0, 2.0], [0.0, 0.0, -4.0]]
)
LABELLED_NAMES = ("south-west", "south-east", "north", "below")


def labelled_template(base: Path) -> Path:
    """A fitted store made once per session with model "lab": 120 codes in 4 tight clusters
    around :data:`LABELLED_CENTRES` (d = 3), labelled by cluster (30 each, in order) and
    named :data:`LABELLED_NAMES`."""
    key = ("lab", 120, 3)
    if key not in _TEMPLATES:
        rng = np.random.default_rng(1)
        labels = np.repeat(np.arange(4), 30)
        noise = 0.2 * rng.standard_normal((120, 3))
        latents = (LABELLED_CENTRES[labels] + noise).astype(np.float32)
        torch.manual_seed(0)
        config = AutoencoderConfig(
            arch="mlp", image_shape=(1, 8, 8), latent_dim=3, mlp_hidden=(16,)
        )
        bundle = base / "labelled-bundle"
        save_bundle(
            bundle,
            model=Autoencoder(config),
            latents=latents,
            labels=labels,
            class_names=LABELLED_NAMES,
            dataset="lab",
        )
        root = base / "labelled-template" / "store"
        store = ModelStore(root)
        store.register("lab", bundle)
        Worker(store, make_settings(root, default_model="lab")).run(idle_exit=True)
        _TEMPLATES[key] = root
    return _TEMPLATES[key]


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem mounted at ``path`` (unmounted after).

    Where it cannot be mounted the test skips, saying why (not root, or root without the
    right to mount, e.g. an unprivileged container); under ``CI=true`` it fails instead: CI
    runs as root and must run the disk tests.
    """
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        why = (
            "not root"
            if os.geteuid() != 0
            else "root, but mounting is not permitted here (no CAP_SYS_ADMIN?): "
            + done.stderr.decode(errors="replace").strip()
        )
        if IN_CI:
            pytest.fail(f"CI=true but a tmpfs cannot be mounted ({why}); the disk tests need one")
        pytest.skip(f"cannot mount a tmpfs here ({why})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(directory: Path) -> None:
    """Write a filler file until the filesystem has not one byte left."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    shutil.disk_usage(directory)  # still readable
