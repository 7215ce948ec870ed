"""One rank of the distributed-estimate tests; launched by tests/test_distributed.py via torchrun.

Usage: torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py OUT_DIR
Writes OUT_DIR/{case}-rank{r}.npz for every case of ``CASES``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch.distributed as dist
from oracles import dyadic_ties

from solver import CellIndex, PassSpec, SourceMeasure
from solver.estimation.distributed import ShardedIndex, distributed_estimate
from solver.estimation.host import DeadlineReached

N, DIM, SAMPLES, BATCH = 60, 3, 5000, 512
# name: (sharded, k, gap_width, centres, sampler)
CASES = {
    "replicated-k1": (False, 1, None, False, "random"),
    "replicated-k2": (False, 2, None, True, "sobol"),
    "sharded-k2": (True, 2, 0.01, True, "random"),
}


def problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = (0.4 * rng.standard_normal((N, DIM))).astype(np.float32)
    h = (0.01 * rng.standard_normal(N)).astype(np.float32)
    return y, h


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    y, h = problem()
    for name, (sharded, k, gap, centres, sampler) in CASES.items():
        source = SourceMeasure(dim=DIM, sampler=sampler)
        index = ShardedIndex(y, h, backend="torch") if sharded else CellIndex(y, h, "torch")
        est = distributed_estimate(
            index,
            PassSpec(
                source=source,
                n_samples=SAMPLES,
                seed=3,
                k=k,
                gap_width=gap,
                centres=centres,
                batch_size=BATCH,
            ),
        )
        np.savez(
            out / f"{name}-rank{rank}.npz",
            counts=est.counts,
            energy=est.energy,
            cost=est.transport_cost,
            pairs=est.pairs,
            pair_counts=est.pair_counts,
            slab_counts=est.slab_counts,
            gap_width=est.gap_width,
            median_gap=est.median_gap,
            mass_sums=np.zeros(0) if est.mass_sums is None else est.mass_sums,
        )
    # A deadline: every rank stops at the same batch (here the first: it has passed already).
    stopped = False
    try:
        distributed_estimate(
            CellIndex(y, h, "torch"),
            PassSpec(
                source=SourceMeasure(dim=DIM),
                n_samples=SAMPLES,
                seed=3,
                batch_size=BATCH,
                deadline=time.perf_counter() - 1.0,
            ),
        )
    except DeadlineReached:
        stopped = True
    (out / f"deadline-rank{rank}.txt").write_text(str(stopped))
    # Rows and candidate scores gathered from their owners equal one process's.
    sharded = ShardedIndex(y, h, backend="torch")
    cells = np.random.default_rng(1).integers(0, N, size=(300, 4))
    x = SourceMeasure(dim=DIM).sample(300, seed=9)
    h64 = h.astype(np.float64)
    got_s, got_c = sharded.candidate_scores(x, h64, cells, 2)
    np.savez(
        out / f"owners-rank{rank}.npz",
        rows=sharded.rows(cells[:, 0]),
        norms=sharded.squared_norms(),
        scores=got_s,
        cells=got_c,
        x=x,
        candidates=cells,
    )
    # The tie rule across shards: exact duplicates on both ranks' slices.
    x, y, h = dyadic_ties(np.random.default_rng(3), 64, 5, 200, duplicates=True)
    scores, cells = ShardedIndex(y, h, backend="torch").search(x, 5)
    np.savez(out / f"sharded-ties-rank{rank}.npz", x=x, y=y, h=h, scores=scores, cells=cells)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
