"""Cell-query throughput per backend, candidate-certificate model, OT fit time-to-accuracy.

Prints one JSON object per line (definitions in docs/benchmarks.md):

- ``machine``: platform, CPU count, torch / triton / faiss versions, GPU name or none;
- ``cell_query``: queries/s of every available backend side by side (faiss, faiss-gpu, torch,
  torch-cuda fp32 and tf32, triton tf32 / bf16 / fp32), top-1 mismatch rate against an fp32
  reference and the number of reference near-ties;
- ``candidate_model``: CPU emulation of the fused kernel's candidate step (tf32 truncated to 10
  mantissa bits, bf16 rounded) at each candidate-list size: how often the exact top-1 is missed
  by the low-precision candidates, and how often the certificate sends a query to the fallback;
- ``fit``: time to L1 <= target with no empty cell for the default method and the Adam baseline.

Usage: ``python bench/gpu.py`` (full sizes, for a GPU host) or ``python bench/gpu.py --quick``
(reduced sizes, runs on a laptop CPU in a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver import CellIndex, FitConfig, available_backends, fit, make_problem

if TYPE_CHECKING:
    from solver import TritonBackend

FULL = {"n": [10_000, 60_000, 1_000_000], "d": [16, 64, 128], "queries": 1 << 20}
QUICK = {"n": [1_000, 10_000], "d": [16, 64], "queries": 1 << 14}
FIT_FULL = {"n": 60_000, "d": 64, "clusters": 10, "budget": 600.0, "target_l1": 0.05}
FIT_QUICK = {"n": 500, "d": 4, "clusters": 10, "budget": 20.0, "target_l1": 0.1}
# Reference near-tie: top-2 gap below this many fp32 ulps of the score scale.
_TIE_ULPS = 64


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def machine() -> dict:
    def version(name: str) -> str | None:
        if importlib.util.find_spec(name) is None:
            return None
        module = __import__(name)
        return getattr(module, "__version__", "unknown")

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "name": "machine",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "faiss": version("faiss"),
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "backends": available_backends(),
    }


def clustered_latents(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Unit-scale latents: ``clusters`` Gaussian blobs (centres N(0, I), spread 0.3)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


def voronoi_problem(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets in the fit's normalised frame with the Voronoi start h = -|y|^2 / 2."""
    y = clustered_latents(n, d, 10, seed).astype(np.float64)
    y -= y.mean(axis=0)
    y /= np.sqrt(np.square(y).sum(axis=1).mean()) / np.sqrt(d / 12.0)
    return y.astype(np.float32), (-0.5 * np.square(y).sum(axis=1)).astype(np.float32)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Let cuBLAS fp32 matmuls use TF32 tensor cores inside the block."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_top2(x: torch.Tensor, y: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, ...]:
    """fp32 (TF32 off) top-2 scores and cells in large chunks, on the queries' device."""
    yt = torch.from_numpy(y).to(x.device).T.contiguous()
    ht = torch.from_numpy(h).to(x.device)
    chunk = max(1, (1 << 27) // y.shape[0])
    scores, cells = [], []
    with tf32(False):
        for lo in range(0, x.shape[0], chunk):
            top = torch.addmm(ht, x[lo : lo + chunk], yt).topk(2, dim=1)
            scores.append(top.values.cpu())
            cells.append(top.indices.cpu())
    return torch.cat(scores).numpy(), torch.cat(cells).numpy()


def query_backends(
    y: np.ndarray, h: np.ndarray, *, cpu: bool = True
) -> Iterator[tuple[str, str, Callable[..., Any], TritonBackend | None]]:
    """(name, where queries live, search function, Triton backend or None) of each backend.

    The Triton backend comes along so the caller can read its fallback counter. ``cpu=False``
    leaves out the backends that search on the CPU (faiss, torch).
    """
    names = available_backends()
    for name in ("faiss", "faiss-gpu", "torch") if cpu else ("faiss-gpu",):
        if name in names:
            yield name, "host", CellIndex(y, h, backend=name).search, None
    if "torch-cuda" in names:
        index = CellIndex(y, h, backend="torch-cuda")
        yield "torch-cuda-fp32", "cuda", index.search, None

        def tf32_search(x, k, index=index):
            with tf32(True):
                return index.search(x, k)

        yield "torch-cuda-tf32", "cuda", tf32_search, None
    if "triton" in names:
        from solver import TritonBackend

        for precision in ("tf32", "bf16", "fp32"):
            backend = TritonBackend(y, h, precision=precision)
            yield f"triton-{precision}", "cuda", backend.search, backend


def bench_queries(sizes: dict, seed: int, *, cpu: bool = True) -> None:
    m = sizes["queries"]
    for n in sizes["n"]:
        for d in sizes["d"]:
            y, h = voronoi_problem(n, d, seed)
            x_host = (np.random.default_rng(seed + 1).random((m, d)) - 0.5).astype(np.float32)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            ref_s, ref_c = reference_top2(torch.from_numpy(x_host).to(device), y, h)
            scale = np.abs(ref_s[:, 0]).max()
            ties = int(np.count_nonzero(ref_s[:, 0] - ref_s[:, 1] <= _TIE_ULPS * 2**-24 * scale))
            for name, where, search, triton in query_backends(y, h, cpu=cpu):
                x = torch.from_numpy(x_host).cuda() if where == "cuda" else x_host
                search(x[:1024], 1)  # warm-up: compile kernels, allocate workspaces
                sync()
                fallbacks = None if triton is None else triton.fallbacks
                start = time.perf_counter()
                _, cells = search(x, 1)
                sync()
                seconds = time.perf_counter() - start
                cells = cells.cpu().numpy() if isinstance(cells, torch.Tensor) else cells
                mismatch = int(np.count_nonzero(cells[:, 0] != ref_c[:, 0]))
                record = {
                    "name": "cell_query",
                    "backend": name,
                    "n": n,
                    "d": d,
                    "queries": m,
                    "queries_on": where,
                    "seconds": seconds,
                    "queries_per_s": m / seconds,
                    "top1_mismatch_rate": mismatch / m,
                    "reference_near_ties": ties,
                    "heights": "voronoi start, normalised frame",
                }
                if triton is not None and fallbacks is not None:
                    record["fallback_fraction"] = (triton.fallbacks - fallbacks) / m
                emit(record)


def _round_bf16(a: torch.Tensor) -> torch.Tensor:
    return a.to(torch.bfloat16).to(torch.float32)


def _truncate_tf32(a: torch.Tensor) -> torch.Tensor:
    bits = a.contiguous().view(torch.int32) & ~((1 << 13) - 1)
    return bits.view(torch.float32)


def candidate_model(n: int, d: int, queries: int, seed: int) -> None:
    """Emulate the kernel's candidate selection and certificate on the CPU (float64 truth)."""
    y, h = voronoi_problem(n, d, seed)
    x = torch.from_numpy(
        (np.random.default_rng(seed + 2).random((queries, d)) - 0.5).astype(np.float32)
    )
    yt, ht = torch.from_numpy(y), torch.from_numpy(h)
    exact = torch.addmm(ht.double(), x.double(), yt.double().T)
    best = exact.topk(2, dim=1).indices
    ymax = float(torch.linalg.vector_norm(yt.double(), dim=1).max())
    for precision, rnd in (("tf32", _truncate_tf32), ("bf16", _round_bf16)):
        xr, yr = rnd(x), rnd(yt)
        approx = torch.addmm(ht, xr, yr.T)
        if precision == "bf16":
            a = torch.linalg.vector_norm((x - xr).double(), dim=1)
            emax = float(torch.linalg.vector_norm((yt - yr).double(), dim=1).max())
        else:
            a = torch.linalg.vector_norm(x.double(), dim=1) * 2.0**-10
            emax = ymax * 2.0**-10
        b = torch.linalg.vector_norm(xr.double(), dim=1)
        u = 2.0**-23
        eps = a * ymax + b * emax + (d + 1) * u * b * (ymax + emax) + u * float(ht.abs().max())
        for k, kp in ((1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (2, 16)):
            top = approx.topk(kp, dim=1)
            found = (top.indices[:, :, None] == best[:, None, :k]).any(dim=1).all(dim=1)
            vals = top.values.double()
            flagged = vals[:, -1] >= vals[:, k - 1] - 2 * eps
            emit(
                {
                    "name": "candidate_model",
                    "precision": precision,
                    "candidates": kp,
                    "k": k,
                    "n": n,
                    "d": d,
                    "queries": queries,
                    "topk_missed_by_candidates": float((~found).double().mean()),
                    "fallback_fraction": float(flagged.double().mean()),
                    "missed_but_certified": int((~found & ~flagged).sum()),
                    "heights": "voronoi start, normalised frame",
                    "emulated_on": "cpu",
                }
            )


def bench_fit(spec: dict, seed: int) -> None:
    problem = make_problem(clustered_latents(spec["n"], spec["d"], spec["clusters"], seed))
    for method in ("newton", "adam"):
        config = FitConfig(
            method=method, time_budget=spec["budget"], target_l1=spec["target_l1"], seed=seed
        )
        result = fit(problem, config)
        checks = [
            {"elapsed": r.elapsed, "l1": r.check.l1, "empty_cells": r.check.empty_cells}
            for r in result.history
            if r.check is not None
        ]
        acc = result.accuracy
        emit(
            {
                "name": "fit",
                "method": method,
                "n": spec["n"],
                "d": spec["d"],
                "clusters": spec["clusters"],
                "target_l1": spec["target_l1"],
                "time_budget": spec["budget"],
                "backend": result.backend,
                "converged": result.converged,
                "reason": result.reason,
                "seconds": result.elapsed,
                "iterations": result.iterations,
                "l1": None if acc is None else acc.l1,
                "empty_cells": None if acc is None else acc.empty_cells,
                "noise_floor": None if acc is None else acc.noise_floor,
                "checks": checks,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (CPU)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["queries", "model", "fit"],
        help="sections to leave out",
    )
    parser.add_argument("--fit-budget", type=float, help="seconds per fit method")
    parser.add_argument("--n", type=int, nargs="*", help="override the N values of the queries")
    parser.add_argument("--d", type=int, nargs="*", help="override the d values of the queries")
    parser.add_argument("--queries", type=int, help="override the number of queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-cpu-backends",
        action="store_true",
        help="queries: leave out the backends that search on the CPU (faiss, torch)",
    )
    args = parser.parse_args()
    emit(machine())
    if "queries" not in args.skip:
        sizes = dict(QUICK if args.quick else FULL)
        for key in ("n", "d", "queries"):
            if getattr(args, key):
                sizes[key] = getattr(args, key)
        bench_queries(sizes, args.seed, cpu=not args.no_cpu_backends)
    if "model" not in args.skip:
        if args.quick:
            candidate_model(10_000, 64, 2048, args.seed)
        else:
            candidate_model(60_000, 64, 16384, args.seed)
    if "fit" not in args.skip:
        spec = dict(FIT_QUICK if args.quick else FIT_FULL)
        if args.fit_budget is not None:
            spec["budget"] = args.fit_budget
        bench_fit(spec, args.seed)


if __name__ == "__main__":
    main()
