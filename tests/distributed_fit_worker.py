"""One rank of the distributed-fit tests; launched by tests/test_distributed_fit.py via torchrun.

Usage: torchrun --standalone --nproc-per-node W tests/distributed_fit_worker.py OUT_DIR [sharded]
Rank 0 leads two fits (the second stopped by its callback), the other ranks follow; every rank
writes OUT_DIR/fit-rank{r}.npz with its heights and the lead's view of the run. With
``sharded``, the fits split the targets over the ranks (``shard_targets=True``), and every rank
also writes OUT_DIR/memory-rank{r}.json: the bytes a sharded index of a larger problem holds on
it, against a one-process index of the same targets.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import torch.distributed as dist

from solver import (
    CellIndex,
    FitConfig,
    available_backends,
    fit,
    follow_fit,
    make_problem,
    release_followers,
)
from solver.estimation.sharded import ShardedIndex, shard_bounds

# 100 targets: split 33 / 33 / 34 over 3 ranks, and a hierarchical start (K = 10).
N, DIM, TARGET = 100, 4, 0.1


def problem():
    y = np.random.default_rng(11).uniform(-0.4, 0.4, (N, DIM))
    return make_problem(y)


def config(*, sharded: bool = False) -> FitConfig:
    return FitConfig(
        target_l1=TARGET, seed=2, backend="torch", batch_size=4096, shard_targets=sharded
    )


def index_bytes(build) -> int:
    """Bytes of numpy memory an index keeps once built (tracemalloc counts numpy's buffers)."""
    tracemalloc.start()
    index = build()
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del index
    return kept


def memory(out: Path, rank: int, world: int) -> None:
    y = np.random.default_rng(5).standard_normal((30_001, 32)).astype(np.float32)
    lo, hi = shard_bounds(len(y), world, rank)
    local = np.ascontiguousarray(y[lo:hi])
    backend = "simd" if "simd" in available_backends() else "faiss"  # numpy-held layouts
    sharded = index_bytes(lambda: ShardedIndex(local, n_targets=len(y), backend=backend))
    whole = index_bytes(lambda: CellIndex(y, backend=backend))
    (out / f"memory-rank{rank}.json").write_text(
        json.dumps({"sharded": sharded, "whole": whole, "rows": hi - lo})
    )


def main(out: Path, sharded: bool) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if sharded:
        memory(out, rank, dist.get_world_size())
    calls = 0

    def stop_at_three(progress) -> bool:
        nonlocal calls
        calls += 1
        return progress.record.iteration < 3

    if rank == 0:
        result = fit(problem(), config(sharded=sharded))
        stopped = fit(problem(), config(sharded=sharded), callback=stop_at_three)
        release_followers()
    else:
        result = follow_fit()
        stopped = follow_fit()
        assert follow_fit() is None
    assert result is not None and stopped is not None
    np.savez(
        out / f"fit-rank{rank}.npz",
        heights=result.heights,
        l1=result.accuracy.l1 if result.accuracy else np.nan,
        converged=result.converged,
        estimator=result.estimator,
        backend=result.backend,
        iterations=result.iterations,
        stopped_reason=stopped.reason,
        stopped_iterations=stopped.iterations,
        callback_calls=calls,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sharded=sys.argv[2:] == ["sharded"])
