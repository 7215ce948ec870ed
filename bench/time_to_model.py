"""From a dataset to served samples: ``aeot serve --data`` on an empty store, timed.

Starts ``aeot serve --data DATA [--subset N] [--epochs E]`` as a user does (a real server
process with its worker, default settings, a temporary store), then polls ``/models`` and
``/readyz``: the seconds from the process start to the end of training (the model registered),
to the first published potential (``/readyz`` 200) and to the first ``/sample`` (a 64-image PNG
grid, as ``aeot sample`` asks). Prints JSON lines: the setup (machine, load), one line per
training epoch as ``/models`` reports it, and the result.

    python bench/time_to_model.py /data/mnist --subset 10000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info

ROOT = Path(__file__).resolve().parents[1]


def serve(data: str, store: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    """``aeot serve --data`` on 127.0.0.1 with default settings and its worker."""
    env = {
        **os.environ,
        "AEOT_STORE": str(store),
        "AEOT_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "service.cli", "serve", "--data", data, "--port", str(port)]
    return subprocess.Popen([*cmd, *extra], env=env, cwd=ROOT)


def watch(url: str, server: subprocess.Popen[bytes], timeout: float) -> dict:
    """Poll until the first sample; the seconds of each milestone and the epochs seen."""
    start = time.perf_counter()
    marks: dict[str, float] = {}
    seen = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        while "sample" not in marks:
            elapsed = time.perf_counter() - start
            if elapsed > timeout or server.poll() is not None:
                raise TimeoutError(f"no sample after {elapsed:.0f} s (milestones {marks})")
            try:
                listing = http.get("/models").json()
                models, jobs = listing["models"], listing["jobs"]
            except (httpx.TransportError, ValueError, KeyError):
                time.sleep(1.0)
                continue
            marks.setdefault("server", elapsed)
            for job in jobs:
                progress = job.get("training") or {}
                if job.get("kind") == "train" and progress.get("epoch", 0) > seen:
                    seen = progress["epoch"]
                    emit({"kind": "epoch", "seconds": round(elapsed, 1), **progress})
            if models:  # registered: training is over, its fit queued
                marks.setdefault("trained", elapsed)
            if "trained" in marks and http.get("/readyz").status_code == 200:
                marks.setdefault("ready", elapsed)
                png = http.get("/sample", params={"n": 64, "seed": 1, "format": "png"})
                if png.status_code == 200:
                    marks["sample"] = time.perf_counter() - start
            time.sleep(1.0)
    return {f"seconds_to_{k}": round(v, 1) for k, v in marks.items()}


def main() -> None:
    """Run the measurement (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="as for `aeot serve --data`")
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds at most")
    args = parser.parse_args()
    extra = [] if args.subset is None else ["--subset", str(args.subset)]
    extra += [] if args.epochs is None else ["--epochs", str(args.epochs)]
    emit(
        {
            "kind": "setup",
            "command": f"aeot serve --data {args.data} {' '.join(extra)}".strip(),
            "machine": machine_info(),
            "load_average": os.getloadavg(),
        }
    )
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        server = serve(args.data, Path(tmp) / "store", port, extra)
        try:
            result = watch(f"http://127.0.0.1:{port}", server, args.timeout)
        finally:
            server.terminate()
            server.wait(timeout=120)
    emit({"kind": "result", **result, "load_average": os.getloadavg()})


if __name__ == "__main__":
    main()
