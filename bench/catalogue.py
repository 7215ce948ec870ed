"""Catalogue benchmark: what the rollback journal and the self-healing cost.

Prints one JSON object per line. Usage::

    python bench/catalogue.py                  # in a temporary directory under --dir
    python bench/catalogue.py --dir /srv/store --writes 200 --jobs 100 1000 10000

Rows:

- ``write``: one heartbeat (an ``UPDATE`` in its own connection and ``BEGIN IMMEDIATE``
  transaction, as every catalogue write is) with the catalogue's rollback journal
  (``synchronous=FULL``, the service's) against SQLite's WAL mode (``synchronous=NORMAL``,
  what the service used before), p50/p99 over ``--writes`` writes on the disk of ``--dir``.
- ``read_during_writes``: a models query in its own connection while another process writes
  heartbeats 4 times a second, both journal modes: p50/p99/max.
- ``check``: :meth:`Catalog.check` (``PRAGMA quick_check`` and the tables) on a catalogue with
  ``--jobs`` finished job rows; the server's poller runs it every 5 s.
- ``rebuild``: :meth:`ModelStore.heal` rebuilding the catalogue of a store with ``--models``
  models of ``--potentials`` potential files each (real bundle and potential files; the
  rebuild reads each potential's metadata, hashes each bundle's latents).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import clustered_latents, emit, machine_info
from models.autoencoder import Autoencoder, AutoencoderConfig
from models.bundle import save_bundle
from service.catalog import Catalog
from service.job_config import JobConfig
from service.jobs import JobQueue
from service.store import ModelStore
from solver import Potential, PotentialConfig, make_problem


def _quantiles(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.median(a)), 3),
        "p99_ms": round(float(np.quantile(a, 0.99)), 3),
        "max_ms": round(float(a.max()), 3),
    }


def _catalogue(path: Path, mode: str) -> tuple[Catalog, sqlite3.Connection | None]:
    """A catalogue with one job, in the given journal mode.

    In WAL mode a connection stays open, as the service kept one to hold the WAL files; the
    ``Catalog`` is made first (opening one switches a catalogue out of WAL mode).
    """
    catalog = Catalog(path)
    JobQueue(catalog).enqueue("m", "fit", JobConfig(), "h")
    if mode != "wal":
        return catalog, None
    keeper = sqlite3.connect(path, isolation_level=None)
    assert keeper.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    keeper.execute("SELECT count(*) FROM models").fetchone()  # holds the -wal and -shm open
    return catalog, keeper


def _beat(path: Path, sync: str) -> None:
    con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30, isolation_level=None)
    try:
        con.execute(f"PRAGMA synchronous={sync}")
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE jobs SET heartbeat = ? WHERE id = 1", (time.time(),))
        con.execute("COMMIT")
    finally:
        con.close()


def bench_writes(root: Path, writes: int) -> None:
    """One heartbeat write per connection, both journal modes."""
    for mode, sync in (("delete", "FULL"), ("wal", "NORMAL")):
        path = root / f"write-{mode}.sqlite3"
        _, keeper = _catalogue(path, mode)
        times = []
        for _ in range(writes):
            start = time.perf_counter()
            _beat(path, sync)
            times.append(time.perf_counter() - start)
        if keeper is not None:
            keeper.close()
        emit({"kind": "write", "journal": mode, "synchronous": sync, **_quantiles(times)})


def _writer(path: str, sync: str, until: float) -> None:
    while time.time() < until:
        _beat(Path(path), sync)
        time.sleep(0.25)


def bench_reads_during_writes(root: Path, seconds: float) -> None:
    """Reads in a loop while another process heartbeats 4 times a second."""
    for mode, sync in (("delete", "FULL"), ("wal", "NORMAL")):
        path = root / f"read-{mode}.sqlite3"
        catalog, keeper = _catalogue(path, mode)
        until = time.time() + seconds
        writer = mp.get_context("spawn").Process(target=_writer, args=(str(path), sync, until))
        writer.start()
        times = []
        while time.time() < until:
            start = time.perf_counter()
            catalog.models()
            times.append(time.perf_counter() - start)
            time.sleep(0.001)
        writer.join()
        if keeper is not None:
            keeper.close()
        emit(
            {
                "kind": "read_during_writes",
                "journal": mode,
                "reads": len(times),
                **_quantiles(times),
            }
        )


def bench_check(root: Path, jobs: list[int]) -> None:
    """Catalog.check on catalogues with many finished job rows."""
    for n in jobs:
        path = root / f"check-{n}.sqlite3"
        catalog = Catalog(path)
        con = sqlite3.connect(path, isolation_level=None)
        config = JobConfig().to_json()
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO jobs (model, kind, status, config, created) VALUES (?, ?, ?, ?, ?)",
            [("m", "fit", "done", config, time.time())] * n,
        )
        con.execute("COMMIT")
        con.close()
        times = []
        for _ in range(20):
            start = time.perf_counter()
            assert catalog.check() is None
            times.append(time.perf_counter() - start)
        size = path.stat().st_size
        emit({"kind": "check", "jobs": n, "bytes": size, **_quantiles(times)})


def bench_rebuild(root: Path, models: int, potentials: int, n: int, d: int) -> None:
    """ModelStore.heal(force=True) on a store of real bundles and potential files."""
    store_root = root / "store"
    store = ModelStore(store_root)
    config = AutoencoderConfig(arch="mlp", image_shape=(1, 8, 8), latent_dim=d, mlp_hidden=(16,))
    latents = clustered_latents(n, d)
    problem = make_problem(latents)
    potential = Potential.build(
        problem, np.zeros(problem.n_targets), seed=0, config=PotentialConfig(samples_per_cell=8)
    )
    for m in range(models):
        bundle = root / f"bundle-{m}"
        save_bundle(bundle, model=Autoencoder(config), latents=latents, dataset="bench")
        name = f"m{m}"
        store.register(name, bundle, move=True)
        folder = store.model_dir(name) / "potentials"
        folder.mkdir()
        potential.save(folder / "v1-job1-it1.npz")
        for v in range(2, potentials + 1):
            shutil.copy(folder / "v1-job1-it1.npz", folder / f"v{v}-job1-it{v}.npz")
    size = sum(p.stat().st_size for p in store_root.rglob("*") if p.is_file())
    times = []
    for _ in range(3):
        start = time.perf_counter()
        store.heal(force=True)
        times.append(time.perf_counter() - start)
    assert store.catalog.published_versions() == {f"m{m}": potentials for m in range(models)}
    emit(
        {
            "kind": "rebuild",
            "models": models,
            "potentials_per_model": potentials,
            "n_latents": n,
            "dim": d,
            "store_bytes": size,
            "seconds": [round(t, 3) for t in times],
        }
    )


def main() -> None:
    """Run the rows and print them as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (its disk)")
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--read-seconds", type=float, default=5.0, help="0: skip that row")
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--potentials", type=int, default=20)
    parser.add_argument("--n", type=int, default=10000, help="latents per model")
    parser.add_argument("--d", type=int, default=16, help="latent dimension")
    args = parser.parse_args()
    emit({"kind": "machine", **machine_info()})
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="aeot-bench-catalogue-") as tmp:
        root = Path(tmp)
        bench_writes(root, args.writes)
        if args.read_seconds > 0:
            bench_reads_during_writes(root, args.read_seconds)
        bench_check(root, args.jobs)
        bench_rebuild(root, args.models, args.potentials, args.n, args.d)


if __name__ == "__main__":
    main()
