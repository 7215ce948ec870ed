"""Runs the fused Triton kernel under the interpreter; launched by tests/test_fused.py.

Usage: TRITON_INTERPRET=1 python tests/fused_worker.py OUT_DIR
The interpreter must be switched on before triton is imported, and it would turn every later
kernel of the process into Python, so it runs here, in its own process. Results go to
OUT_DIR/{case}.npz (inputs and outputs; the test computes the references) and
OUT_DIR/errors.json (messages of refused arguments).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from oracles import dyadic_ties

from solver import PassSpec, SourceMeasure
from solver.cells.triton_index import MAX_K, TileConfig, TritonBackend, interpreting
from solver.estimation.fused import fused_estimate

M, N = 64, 100
# Tiles smaller than the problem: several query blocks and a partial last key tile.
TILES = TileConfig(block_m=32, block_n=32)
# name: (d, k, precision, margin). Every precision with two values of k and both dimensions
# with three, not the full product: each case costs ~0.6 s under the interpreter.
SEARCH_CASES = {
    "d3-k1-tf32": (3, 1, "tf32", None),
    "d3-k2-fp32": (3, 2, "fp32", None),
    "d3-k5-tf32": (3, 5, "tf32", None),
    "d17-k2-tf32": (17, 2, "tf32", None),
    "d17-k1-bf16": (17, 1, "bf16", None),
    "d17-k5-bf16": (17, 5, "bf16", None),
    "d17-k5-fp32": (17, 5, "fp32", None),
    "d17-k2-bf16-margin0": (17, 2, "bf16", 0),
}

# name: (d, k, precision, duplicates) on problems full of exactly equal scores (the tie rule).
TIE_CASES = {
    "ties-d17-k2-tf32-dup": (17, 2, "tf32", True),
    "ties-d17-k5-bf16-dup": (17, 5, "bf16", True),
    "ties-d17-k2-fp32-dup": (17, 2, "fp32", True),
    "ties-d3-k5-tf32": (3, 5, "tf32", False),
    "ties-d3-k2-bf16": (3, 2, "bf16", False),
    "ties-d3-k5-fp32": (3, 5, "fp32", False),
}


def problem(d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((N, d)).astype(np.float32)
    h = rng.standard_normal(N).astype(np.float32)
    x = (rng.random((M, d)) - 0.5).astype(np.float32)
    return x, y, h


def clustered(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five clusters of 20 almost equal targets: many candidates within the bf16 error."""
    x, y, h = problem(d, 99)
    rng = np.random.default_rng(5)
    y = (np.repeat(y[:5], 20, axis=0) + 1e-3 * rng.standard_normal((N, d))).astype(np.float32)
    return x, y, np.zeros(N, np.float32)


def run_search(out: Path) -> None:
    for i, (name, (d, k, precision, margin)) in enumerate(SEARCH_CASES.items()):
        x, y, h = problem(d, i)
        backend = TritonBackend(y, h, precision=precision, margin=margin, tiles=TILES)
        scores, cells = backend.search(x, k)
        np.savez(
            out / f"{name}.npz",
            x=x,
            y=y,
            h=h,
            k=k,
            scores=scores,
            cells=cells,
            fallbacks=backend.fallbacks,
        )
    for i, (name, (d, k, precision, duplicates)) in enumerate(TIE_CASES.items()):
        x, y, h = dyadic_ties(np.random.default_rng(i), N, d, M, duplicates=duplicates)
        backend = TritonBackend(y, h, precision=precision, tiles=TILES)
        scores, cells = backend.search(x, k)
        np.savez(out / f"{name}.npz", x=x, y=y, h=h, k=k, scores=scores, cells=cells)
    # Cells 1 and 2 tie in the first key tile and cell 40 beats both in the second: the running
    # list (2 slots in fp32) must evict cell 2, not cell 1.
    y, h = np.zeros((N, 3), np.float32), np.full(N, -1.0, np.float32)
    h[[1, 2, 40]] = 0.0, 0.0, 0.5
    x = problem(3, 0)[0]
    scores, cells = TritonBackend(y, h, precision="fp32", tiles=TILES).search(x, 2)
    np.savez(out / "ties-evict-fp32.npz", x=x, y=y, h=h, k=2, scores=scores, cells=cells)
    x, y, h = clustered(17)
    backend = TritonBackend(y, h, precision="bf16", tiles=TILES)
    scores, cells = backend.search(x, 2)
    np.savez(
        out / "clustered.npz",
        x=x,
        y=y,
        h=h,
        k=2,
        scores=scores,
        cells=cells,
        fallbacks=backend.fallbacks,
    )


def run_refresh_and_types(out: Path) -> None:
    x, y, h = problem(5, 50)
    h2 = (h + np.random.default_rng(1).standard_normal(N)).astype(np.float32)
    index = TritonBackend(y, h, tiles=TILES)
    index.set_heights(h2)
    fresh = TritonBackend(y, h2, tiles=TILES)
    ts, tc = index.search(torch.from_numpy(x), 3)
    np.savez(
        out / "refresh.npz",
        refreshed=index.search(x, 3)[1],
        fresh=fresh.search(x, 3)[1],
        tensor_cells=tc.numpy(),
        tensor_types=[str(ts.dtype), str(tc.dtype), str(tc.device)],
    )


def run_estimate(out: Path) -> None:
    _, y, h = problem(3, 77)
    y, h = 0.3 * y, 0.01 * h
    source = SourceMeasure(dim=3)
    fused = fused_estimate(
        TritonBackend(y, h, tiles=TileConfig(block_m=64, block_n=128)),
        PassSpec(
            source=source,
            n_samples=1024,
            seed=11,
            k=2,
            gap_width=0.02,
            centres=True,
            batch_size=512,
        ),
    )
    np.savez(
        out / "estimate.npz",
        y=y,
        h=h,
        counts=fused.counts,
        pairs=fused.pairs,
        pair_counts=fused.pair_counts,
        slab_counts=fused.slab_counts,
        energy=fused.energy,
        mass_sums=fused.mass_sums,
    )


def run_errors(out: Path) -> None:
    x, y, h = problem(3, 0)
    attempts = {
        "k": lambda: TritonBackend(y, h).search(x, MAX_K + 1),
        "shape": lambda: TritonBackend(y, h).search(x[:, :2], 1),
        "precision": lambda: TritonBackend(y, h, precision="fp16"),
        "margin": lambda: TritonBackend(y, h, margin=-1),
        "dim": lambda: TritonBackend(np.zeros((4, 300), np.float32), np.zeros(4, np.float32)),
        "heights": lambda: TritonBackend(y, h).set_heights(np.full(N, np.nan, np.float32)),
        "queries": lambda: TritonBackend(y, h).search(np.where(x > 0.4, np.inf, x), 1),
    }
    errors = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            errors[name] = None
        except ValueError as err:
            errors[name] = str(err)
    (out / "errors.json").write_text(json.dumps(errors))


if __name__ == "__main__":
    if not interpreting():
        raise SystemExit("set TRITON_INTERPRET=1 before running this script")
    target = Path(sys.argv[1])
    for part in (run_search, run_refresh_and_types, run_estimate, run_errors):
        start = time.perf_counter()
        part(target)
        print(f"{part.__name__}: {time.perf_counter() - start:.1f} s")
