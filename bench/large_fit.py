"""The Monte Carlo fit at large N: wall time, CPU time, peak memory and where the time goes.

Prints one JSON object per fit. Usage::

    python bench/large_fit.py --sizes 60000x32:0.1 200000x32:0.1 --budget 1800
    python bench/large_fit.py --sizes 10000x16:0.01 --budget 3600 --memory-trace  # memory
    python bench/large_fit.py --sizes 1000000x64:0.1 --budget 1800     # how far in 30 minutes
    torchrun --standalone --nproc-per-node 2 bench/large_fit.py --sizes 200000x32:0.1 --shard
    python bench/large_fit.py --sizes 200000x32:0.1 --budget 3600 --state runs/  # resumable

The targets are the fit benchmark's clustered latents (10 Gaussian clusters, members spread
0.3; ``bench/common.py``). Each record has the fit's outcome (L1 of its last independent check,
iterations, reason), ``wall_s`` and ``cpu_s`` (process CPU seconds: on a shared box the wall
time depends on the other jobs, the CPU seconds much less), ``peak_rss_gb`` (this process;
under torchrun one record per rank) and, with ``--profile``, ``split_s``: seconds of the main
thread inside each part of the fit (cProfile, cumulative): the independent checks, the fitting
passes (stages and line-search trials), the warm-up passes, the Hessian solves, the
hierarchical start (coarse fit included) and the empty-cell rescue. The searches run in helper
threads while the main thread waits inside these parts, so the parts hold the search time; the
rest of the wall time is the driver's own Python. With ``--state DIR`` the fit's state is saved
after every iteration (``DIR/large_fit_NxD_TARGET.npz``) and a later run with the same
arguments continues from it (``resumed_at`` iterations; the fit's elapsed time and its
``time_budget`` count both runs, so a larger ``--budget`` lets a stopped fit go on).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import clustered_latents, emit, machine_info
from solver import (
    FitConfig,
    FitProgress,
    fit,
    follow_fit,
    load_state,
    make_problem,
    release_followers,
    save_state,
)

# Parts of a fit by the functions that do them (module path fragment, function name).
PARTS = {
    "check_passes": ("fitting/newton.py", "_check_estimate"),
    "fit_passes": ("fitting/newton.py", "_estimate"),
    "warmup_steps": ("fitting/newton.py", "_warmup_step"),
    "hessian_solves": ("fitting/newton.py", "newton_direction"),
    "hierarchical_start": ("fitting/hierarchical.py", "start_heights"),
    "rescue": ("fitting/newton.py", "_rescue_empty"),
}


def _size(size: str) -> tuple[int, int, float]:
    shape, _, target = size.partition(":")
    n, d = shape.split("x")
    return int(n), int(d), float(target or 0.1)


def resident_gb() -> float:
    """This process's resident memory now, GB (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 3)


def split(profile: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of each part of :data:`PARTS` in a profile of the main thread."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out = dict.fromkeys(PARTS, 0.0)
    for (path, _, name), (_, _, _, cumulative, _) in stats.items():
        for part, (where, function) in PARTS.items():
            if name == function and path.replace(os.sep, "/").endswith(where):
                out[part] += cumulative
    return {part: round(seconds, 2) for part, seconds in out.items()}


def run(n: int, d: int, target: float, args: argparse.Namespace, rank: int) -> None:
    config = FitConfig(
        target_l1=target, time_budget=args.budget, seed=0, shard_targets=args.shard or None
    )
    problem = make_problem(clustered_latents(n, d, seed=1)) if rank == 0 else None
    path = None if args.state is None else Path(args.state) / f"large_fit_{n}x{d}_{target:g}.npz"
    resume = load_state(path) if path is not None and path.exists() and rank == 0 else None
    profile = cProfile.Profile() if args.profile else None
    trace: list[tuple[int, int, float]] = []  # (iteration, samples, resident GB) per iteration

    def record(progress: FitProgress) -> None:
        trace.append((progress.record.iteration, progress.record.n_samples, resident_gb()))
        if path is not None:
            save_state(path, progress.state)

    wall, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    result = (
        fit(problem, config, callback=record, resume=resume)  # type: ignore[arg-type]
        if rank == 0
        else follow_fit()
    )
    if profile is not None:
        profile.disable()
    assert result is not None
    check = result.accuracy
    emit(
        {
            "bench": "large_fit",
            "n": n,
            "d": d,
            "target_l1": target,
            "rank": rank,
            "shard_targets": bool(args.shard),
            "l1": None if check is None else check.l1,
            "check_samples": None if check is None else check.n_samples,
            "converged": result.converged,
            "reason": result.reason,
            "iterations": result.iterations,
            "resumed_at": None if resume is None else resume.iteration,
            "backend": result.backend,
            "estimator": result.estimator,
            "wall_s": round(time.perf_counter() - wall, 1),
            "fit_elapsed_s": round(result.elapsed, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            **({"split_s": split(profile)} if profile is not None else {}),
            **({"rss_by_iteration": trace} if args.memory_trace and rank == 0 else {}),
            "load": os.getloadavg(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["60000x32:0.1"], help="NxD[:TARGET]")
    parser.add_argument("--budget", type=float, default=1800.0, help="time budget, seconds")
    parser.add_argument("--profile", action="store_true", help="report where the time goes")
    parser.add_argument(
        "--shard", action="store_true", help="under torchrun: split the targets over the ranks"
    )
    parser.add_argument(
        "--memory-trace",
        action="store_true",
        help="record (iteration, samples, resident GB) after every iteration (lead only)",
    )
    parser.add_argument(
        "--state", help="folder: save the fit's state after every iteration, resume from it"
    )
    args = parser.parse_args()
    if args.state is not None:
        Path(args.state).mkdir(parents=True, exist_ok=True)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if ranks > 1:
        import torch.distributed as dist  # only under torchrun

        dist.init_process_group("gloo")
        rank = dist.get_rank()
    if rank == 0:
        emit({"bench": "large_fit", "kind": "machine", "ranks": ranks, **machine_info()})
    try:
        for size in args.sizes:
            run(*_size(size), args, rank)
    finally:
        if ranks > 1:
            if rank == 0:
                release_followers()
            else:
                follow_fit()  # the lead's release
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
