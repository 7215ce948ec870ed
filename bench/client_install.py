"""Size on disk and time of the client install against the full install, side by side.

Builds the wheel once (``python -m build``), then for each kind makes a fresh virtual
environment without pip and installs into it with this environment's pip (``pip --python``):

- ``client``: ``pip install aeot`` (httpx, typer): the Python client and the client commands;
- ``typed``: ``pip install 'aeot[client]'`` (adds numpy and pillow: arrays and PIL images);
- ``full``: ``pip install torch==2.13.0 'aeot[cpu]'`` (the README's first command).

One JSON line per kind: install seconds, MB on disk (allocated blocks, as ``du``), the largest
distributions, and the seconds ``aeot --help`` takes to start. ``--no-cache`` downloads every
package again (``--no-cache-dir``); by default pip's cache serves what it holds.

    python bench/client_install.py [--kinds client,typed,full] [--no-cache]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "client": lambda wheel: [str(wheel)],
    "typed": lambda wheel: [f"{wheel}[client]"],
    "full": lambda wheel: ["torch==2.13.0", f"{wheel}[cpu]"],
}


def load() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def disk_mb(path: Path) -> float:
    """Allocated size of everything under ``path`` in MB (10^6 bytes), links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total / 1e6


def largest(site: Path, count: int = 6) -> dict[str, float]:
    """The ``count`` largest top-level entries of site-packages, MB."""
    sizes = {p.name: disk_mb(p) if p.is_dir() else p.stat().st_size / 1e6 for p in site.iterdir()}
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:count]
    return {name: round(mb, 1) for name, mb in top}


def build_wheel(out: Path) -> Path:
    """The wheel of this checkout (the dev extra carries the build requirements)."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(out), "."],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("aeot-*.whl")
    return wheel


def measure(kind: str, wheel: Path, work: Path, no_cache: bool) -> dict[str, object]:
    """Install ``kind`` into a fresh environment and measure it."""
    env = work / kind
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    before = disk_mb(env)
    cmd = [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q"]
    cmd += ["--no-cache-dir"] if no_cache else []
    load_before = load()
    start = time.perf_counter()
    subprocess.run(cmd + SPECS[kind](wheel), check=True, capture_output=True)
    seconds = time.perf_counter() - start
    (site,) = (env / "lib").glob("python*/site-packages")
    start = time.perf_counter()
    subprocess.run([str(env / "bin" / "aeot"), "--help"], check=True, capture_output=True)
    help_seconds = time.perf_counter() - start
    return {
        "bench": "client_install",
        "kind": kind,
        "install_s": round(seconds, 1),
        "disk_mb": round(disk_mb(env) - before, 1),
        "largest_mb": largest(site),
        "aeot_help_s": round(help_seconds, 2),
        "pip_cache": "off" if no_cache else "on",
        "load_before": load_before,
        "load_after": load(),
    }


def main() -> None:
    """Run the kinds asked for, one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default="client,typed,full")
    parser.add_argument("--no-cache", action="store_true", help="download every package again")
    args = parser.parse_args()
    emit({"bench": "client_install", "machine": machine_info()})
    with tempfile.TemporaryDirectory(prefix="aeot-install-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work / "dist")
        for kind in args.kinds.split(","):
            emit(measure(kind, wheel, work, args.no_cache))


if __name__ == "__main__":
    main()
