"""One rank of the distributed-fit test; launched by tests/test_distributed_fit.py via torchrun.

Usage: torchrun --standalone --nproc-per-node 2 tests/distributed_fit_worker.py OUT_DIR
Rank 0 leads two fits (the second stopped by its callback), the other ranks follow; every rank
writes OUT_DIR/fit-rank{r}.npz with its heights and the lead's view of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from solver import FitConfig, fit, follow_fit, make_problem, release_followers

N, DIM, TARGET = 24, 4, 0.1


def problem():
    y = np.random.default_rng(11).uniform(-0.4, 0.4, (N, DIM))
    return make_problem(y)


def config() -> FitConfig:
    return FitConfig(target_l1=TARGET, seed=2, backend="torch", batch_size=4096)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    calls = 0

    def stop_at_three(progress) -> bool:  # noqa: ANN001
        nonlocal calls
        calls += 1
        return progress.record.iteration < 3

    if rank == 0:
        result = fit(problem(), config())
        stopped = fit(problem(), config(), callback=stop_at_three)
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
        iterations=result.iterations,
        stopped_reason=stopped.reason,
        stopped_iterations=stopped.iterations,
        callback_calls=calls,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
