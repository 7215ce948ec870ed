"""The CPU backends' shared search pool, and their numpy form of queries and results.

The compiled kernel's backends (:mod:`solver.cells.simd_index`) and FAISS on the CPU split a
large search into tasks of :data:`TASK_QUERIES` queries on one process-wide thread pool; a
search of at most one task runs in the caller's thread, so a server's concurrent small
requests search side by side instead of queueing for the pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from solver.cells.ties import Array

# Queries per task of the CPU search pool (the simd kernel and FAISS). FAISS's own OpenMP split
# of one search was slower with 2 threads than with 1 on the 2-core box (N = 10,000, d = 16:
# 60-67k vs 110-130k queries/s); one single-threaded call per pool thread on its share of the
# queries gave 157-165k (docs/benchmarks.md, cell-query throughput).
TASK_QUERIES = 8192


def float32_queries(x: Array) -> np.ndarray:
    """Queries as a contiguous float32 numpy array (the compiled kernel's input)."""
    if isinstance(x, torch.Tensor):
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    return np.ascontiguousarray(x, dtype=np.float32)


def like_input(x: Array, scores: np.ndarray, cells: np.ndarray) -> tuple[Array, Array]:
    """Numpy results as the queries' array type: numpy, or torch tensors on x's device."""
    if isinstance(x, torch.Tensor):
        return (
            torch.from_numpy(scores).to(x.device),
            torch.from_numpy(cells.astype(np.int64)).to(x.device),
        )
    return scores, cells.astype(np.int64, copy=False)


def search_threads() -> int:
    """Threads of the CPU search pool: torch's intra-op thread count.

    One setting for every CPU kernel of a process: torch takes it from ``OMP_NUM_THREADS``
    (``torchrun`` sets 1 per rank, so ranks do not oversubscribe the cores) or the cores.
    """
    return max(1, torch.get_num_threads())


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist: start a new pool on use."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _search_pool() -> ThreadPoolExecutor:
    """One process-wide pool of CPU search threads, created on first use."""
    global _POOL  # created on first use, shared by every index
    if _POOL is None:
        _POOL = ThreadPoolExecutor(search_threads(), thread_name_prefix="cell-search")
    return _POOL


def split_queries(m: int, task: Callable[[int, int], None]) -> None:
    """Run ``task(lo, hi)`` over the query ranges of the search pool's tasks.

    One task runs in the caller's thread, so concurrent small searches (a server's requests)
    run side by side instead of queueing for the pool.
    """
    if m <= TASK_QUERIES:
        task(0, m)
        return
    # list() waits for every task and re-raises the first error.
    starts = range(0, m, TASK_QUERIES)
    list(_search_pool().map(lambda lo: task(lo, min(lo + TASK_QUERIES, m)), starts))
