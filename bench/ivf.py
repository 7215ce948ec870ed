"""Approximate (IVF) cell search against the exact one.

FAISS ``IndexIVFFlat`` could replace the exact search in the fit's early stages if its recall
were high enough at a worthwhile speed-up; these rows measure both (docs/benchmarks.md,
approximate search). The fit keeps exact search. Usage::

    python bench/ivf.py [--quick]            # or: python bench/fit_speed.py --only ivf
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import clustered_latents, emit, machine_info
from solver import SourceMeasure


@dataclass(frozen=True, kw_only=True)
class IvfRecall:
    """How an inverted-file index compares with the exact search (see :func:`ivf_recall`).

    Attributes:
        lists: inverted lists (k-means cells over the lifted targets).
        probes: lists searched per query.
        top1: share of queries whose best cell is the exact one.
        top2: share whose two best cells are the exact two, in order.
        speedup: exact search time over the inverted-file search time (same queries, one run).
    """

    lists: int
    probes: int
    top1: float
    top2: float
    speedup: float


def ivf_recall(
    targets: np.ndarray, heights: np.ndarray, queries: np.ndarray, lists: int, probes: list[int]
) -> list[IvfRecall]:
    """Recall and speed of FAISS ``IndexIVFFlat`` against exact top-2 cell queries.

    The maximum inner product over ``[y_i, h_i]`` becomes a nearest-neighbour search over the
    lifted points ``[y_i, h_i, sqrt(R^2 - |y_i|^2 - h_i^2)]`` (R the largest norm) for queries
    ``[x, 1, 0]``, whose k-means lists an IVF index probes. Measures whether approximate search
    could replace exact search in the fit's stages (docs/solver.md: it does not pay at d >= 16).

    Args:
        targets: y, shape ``(N, d)``.
        heights: h, shape ``(N,)``.
        queries: x, shape ``(M, d)``.
        lists: inverted lists.
        probes: lists searched per query, one result each.

    Raises:
        ImportError: without faiss.
    """
    import faiss  # here, not at the top: the other benchmarks run without faiss

    a = np.hstack([targets, np.asarray(heights)[:, None]]).astype(np.float32)
    a64 = a.astype(np.float64)
    norms = np.square(a64).sum(axis=1)
    lifted = np.hstack([a64, np.sqrt(norms.max() - norms)[:, None]]).astype(np.float32)
    q = np.hstack([queries, np.ones((len(queries), 1))]).astype(np.float32)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # both searches on one thread: a like-for-like ratio
    try:
        exact = faiss.IndexFlatIP(a.shape[1])
        exact.add(a)
        start = time.perf_counter()
        _, best = exact.search(q, 2)
        exact_s = time.perf_counter() - start
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(a.shape[1] + 1), a.shape[1] + 1, lists)
        ivf.train(lifted)
        ivf.add(lifted)
        lifted_q = np.hstack([q, np.zeros((q.shape[0], 1), np.float32)])
        timed = []
        for p in probes:
            ivf.nprobe = p
            start = time.perf_counter()
            _, found = ivf.search(lifted_q, 2)
            timed.append((p, found, time.perf_counter() - start))
    finally:
        faiss.omp_set_num_threads(threads)
    out = []
    for p, found, ivf_s in timed:
        out.append(
            IvfRecall(
                lists=lists,
                probes=p,
                top1=float(np.mean(found[:, 0] == best[:, 0])),
                top2=float(np.mean((found == best).all(axis=1))),
                speedup=exact_s / ivf_s,
            )
        )
    return out


def ivf_rows(quick: bool) -> None:
    """IVF recall and speed-up against exact top-2 search, at Voronoi-start heights."""
    shapes = [(10000, 16)] if quick else [(10000, 16), (60000, 32)]
    for n, d in shapes:
        y = clustered_latents(n, d, seed=1).astype(np.float64)
        y = (y - y.mean(axis=0)) / np.sqrt(np.square(y - y.mean(axis=0)).sum(axis=1).mean())
        y *= np.sqrt(d / 12.0)  # the fit's frame: spread of the unit cube
        h = -0.5 * np.square(y).sum(axis=1)
        x = SourceMeasure(dim=d).sample(65536, seed=1)
        base = round(np.sqrt(n))
        for lists in (base, 4 * base):
            for row in ivf_recall(y, h, x, lists, [1, 2, 4, 8, 16]):
                emit(
                    {
                        "bench": "solver",
                        "kind": "ivf",
                        "n": n,
                        "d": d,
                        **row.__dict__,
                        "load": os.getloadavg(),
                    }
                )


def main() -> None:
    """Print the IVF rows as JSON lines (``--quick``: N = 10,000, d = 16 only)."""
    parser = argparse.ArgumentParser(description="IVF recall and speed-up against exact search.")
    parser.add_argument("--quick", action="store_true", help="N = 10,000, d = 16 only")
    args = parser.parse_args()
    emit({"bench": "solver", "kind": "machine", **machine_info()})
    ivf_rows(args.quick)


if __name__ == "__main__":
    main()
