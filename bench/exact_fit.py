"""Exact-geometry fits in 2D and 3D (``python bench/fit_speed.py --exact``): time to L1 <= 1e-8.

Each row fits one problem with the default ``FitConfig()`` method (``"auto"``: damped Newton
on the exact power diagram in 2D and 3D) and reports the wall time of ``fit`` as the caller sees
it (best of three) with the CPU time of this process during that fit, the iterations, the exact
L1 of the result, and the 1-minute load average before and after (the benchmark machine is
shared: CPU time shows the work when other jobs stretch the wall time). Problems:

- ``uniform``: N targets uniform in [-1, 1]^d, uniform weights;
- ``clusters``: four tight clusters (std 0.05, centres uniform in [-3, 3]^d), weights uniform
  in [0.2, 3] then normalised;
- ``cubed``: a uniform sample of [-1, 1]^d cubed coordinate-wise (strongly non-uniform).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from solver import FitConfig, fit, make_problem

# (problem, N, d, goal seconds or None) as in the engine issue's goals.
CASES = [
    ("uniform", 256, 2, 0.2),
    ("clusters", 256, 2, None),
    ("cubed", 2000, 2, None),
    ("uniform", 10000, 2, 3.0),
    ("uniform", 2000, 3, 5.0),
]


def exact_problem(kind: str, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Targets and weights (``None``: uniform) of one benchmark problem."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(-1, 1, (n, d)), None
    if kind == "cubed":
        return rng.uniform(-1, 1, (n, d)) ** 3, None
    if kind == "clusters":
        centres = rng.uniform(-3, 3, (4, d))
        y = centres[rng.integers(0, 4, n)] + 0.05 * rng.standard_normal((n, d))
        v = rng.uniform(0.2, 3.0, n)
        return y, v / v.sum()
    raise ValueError(f"unknown problem {kind!r}")


def exact_rows(target: float = 1e-8, repeats: int = 3) -> list[dict[str, Any]]:
    """One row per case: best wall time of ``repeats`` fits and that fit's accuracy."""
    rows = []
    for kind, n, d, goal in CASES:
        y, v = exact_problem(kind, n, d)
        problem = make_problem(y, v)
        load_before = os.getloadavg()[0]
        best, cpu, result = np.inf, np.inf, None
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = fit(problem, FitConfig(target_l1=target))
            seconds = time.perf_counter() - start
            if seconds < best:
                best, cpu, result = seconds, time.process_time() - start_cpu, out
        assert result is not None
        rows.append(
            {
                "bench": "solver",
                "kind": "exact_fit",
                "problem": kind,
                "n": n,
                "d": d,
                "target_l1": target,
                "method": result.method,
                "reached": result.converged,
                "reason": result.reason,
                "seconds": round(best, 3),
                "cpu_seconds": round(cpu, 3),
                "goal_seconds": goal,
                "iterations": result.iterations,
                "l1": result.accuracy.l1 if result.accuracy else None,
                "empty_cells": result.accuracy.empty_cells if result.accuracy else None,
                "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
    return rows
