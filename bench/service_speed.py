"""Service benchmark: latency p50/p99 and throughput of /sample against a real server.

Prints one JSON object per line. Usage::

    python bench/service_speed.py                    # startup, then n = 64 at concurrency 1, 8, 32
    python bench/service_speed.py --store DIR        # use an existing store (its default model)
    python bench/service_speed.py --seconds 5 --concurrency 1 8
    python bench/service_speed.py --cli-only         # only the CLI's start-up (a few seconds)

Without ``--store`` the script first measures the README's main command: ``aeot serve`` with
default settings on an empty temporary store (it trains the digits model and fits its OT map
in the worker), timing from process start to the first ``/readyz`` 200 and to the first
successful ``/sample`` (JSON and PNG). That server is then stopped (its worker checkpoints) and
the load runs against a server on the same store without its worker, so the fit does not
compete with the measured requests (the served potential's accuracy does not change the cost
of a request); the load generator (asyncio + httpx) shares the machine's cores.
``--no-startup`` skips the startup measurement and fits for ``--fit-seconds`` instead.
Every run first times the CLI commands that only talk to a server (``aeot --help`` and
``aeot models list`` with nothing listening at ``--url``: start-up and a one-line error), the
median of three runs each, and names the heavy libraries the CLI loads (none is expected).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from service.settings import Settings
from service.store import ModelStore
from service.training import digits_plan, train_into_store
from service.worker import Worker

ROOT = Path(__file__).resolve().parents[1]


def prepare_store(root: Path, fit_seconds: float) -> None:
    """Train the digits model and fit its OT map for a bounded time (one publication)."""
    settings = Settings(
        store=root,
        embedded_default=False,
        worker=False,
        fit_time_budget=fit_seconds,
        publish_interval=fit_seconds / 2,
    )
    store = ModelStore(root)
    train_into_store(store, settings.default_model, digits_plan(0), fit=None)
    Worker(store, settings).run(idle_exit=True)


def start_server(
    root: Path, port: int, *, worker: bool = False, web_workers: int = 1
) -> subprocess.Popen[bytes]:
    """``aeot serve`` on 127.0.0.1 (default settings, optionally without its worker)."""
    env = {
        **os.environ,
        "AEOT_STORE": str(root),
        "AEOT_WORKER": "true" if worker else "false",
        "AEOT_WEB_WORKERS": str(web_workers),
        "AEOT_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT)


def measure_startup(root: Path, timeout: float = 600.0) -> dict:
    """Seconds from spawning ``aeot serve`` on an empty store to ready and to first samples."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    server = start_server(root, port, worker=True)
    marks: dict[str, float] = {}
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            checks: tuple[tuple[str, str, dict[str, int | str]], ...] = (
                ("ready", "/readyz", {}),
                ("sample_json", "/sample", {"n": 64, "seed": 1}),
                ("sample_png", "/sample", {"n": 64, "seed": 1, "format": "png"}),
            )
            for name, path, params in checks:
                while True:
                    if time.perf_counter() - start > timeout or server.poll() is not None:
                        raise TimeoutError(f"no {name} after {time.perf_counter() - start:.0f} s")
                    try:
                        if http.get(path, params=params).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                marks[name] = time.perf_counter() - start
            status = http.get("/models").json()["models"][0]
    finally:
        stop = time.perf_counter()
        server.terminate()
        server.wait(timeout=60)
    acc = status["accuracy"] or {}
    return {
        "seconds_to_ready": round(marks["ready"], 1),
        "seconds_to_first_sample_json": round(marks["sample_json"], 1),
        "seconds_to_first_sample_png": round(marks["sample_png"], 1),
        "served_version": status["served_version"],
        "served_l1": acc.get("l1"),
        "stop_seconds": round(time.perf_counter() - stop, 1),
    }


def measure_cli(repeats: int = 3) -> dict:
    """Wall seconds of the CLI's client commands (median of ``repeats``) and what they load."""
    nobody = f"http://127.0.0.1:{_free_port()}"
    commands = {"help": ["--help"], "models_list_no_server": ["models", "list", "--url", nobody]}
    result: dict = {}
    for name, args in commands.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "service.cli", *args],
                cwd=ROOT,
                capture_output=True,
                timeout=120,
            )
            times.append(time.perf_counter() - start)
        result[f"{name}_seconds"] = round(float(np.median(times)), 2)
    heavy = ("torch", "faiss", "scipy")
    probe = f"import sys, service.cli; print(*[m for m in {heavy} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    result["heavy_modules_loaded"] = loaded.stdout.split()
    return result


def wait_ready(url: str, timeout: float = 120.0) -> None:
    """Poll /readyz until 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server not ready")


async def load(url: str, fmt: str, n: int, concurrency: int, seconds: float) -> dict:
    """``concurrency`` closed-loop clients for ``seconds``; latency per request."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        for _ in range(3):  # warm-up: connections, first decode
            await client.get("/sample", params={"n": n, "format": fmt})
        stop = time.perf_counter() + seconds

        async def user(k: int) -> None:
            nonlocal errors
            seed = k * 1_000_000
            while time.perf_counter() < stop:
                seed += 1
                t0 = time.perf_counter()
                r = await client.get("/sample", params={"n": n, "seed": seed, "format": fmt})
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(user(k) for k in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "throughput_rps": round(len(latencies) / wall, 1),
    }


def main() -> None:
    """Run the benchmark grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--fit-seconds", type=float, default=30.0)
    parser.add_argument("--no-startup", action="store_true", help="skip the startup timing")
    parser.add_argument("--web-workers", type=int, default=1, help="server processes")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--formats", nargs="*", default=["json", "png"])
    parser.add_argument("--cli-only", action="store_true", help="only the CLI's start-up")
    args = parser.parse_args()
    emit({"bench": "service", "kind": "machine", **machine_info(), "load_average": os.getloadavg()})
    emit({"bench": "service", "kind": "cli", **measure_cli(), "load_average": os.getloadavg()})
    if args.cli_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.store or Path(tmp) / "store"
        if args.store is None and not args.no_startup:
            emit({"bench": "service", "kind": "startup", **measure_startup(root)})
        elif args.store is None:
            t0 = time.perf_counter()
            prepare_store(root, args.fit_seconds)
            emit(
                {
                    "bench": "service",
                    "kind": "prepare",
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
        port = _free_port()
        server = start_server(root, port, web_workers=args.web_workers)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url)
            model = httpx.get(f"{url}/models").json()["models"][0]
            for fmt in args.formats:
                for c in args.concurrency:
                    result = asyncio.run(load(url, fmt, args.n, c, args.seconds))
                    emit(
                        {
                            "bench": "service",
                            "kind": "sample",
                            "format": fmt,
                            "n": args.n,
                            "concurrency": c,
                            "web_workers": args.web_workers,
                            "model": model["name"],
                            "n_latents": model["n_latents"],
                            "dim": model["dim"],
                            **result,
                            "load_average": os.getloadavg(),
                        }
                    )
        finally:
            server.terminate()
            server.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
