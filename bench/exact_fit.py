"""Exact-geometry fits in 2D and 3D (``python bench/fit_speed.py --exact``): time to L1 <= 1e-8;
and side by side with the exact peers (``--peers --exact-peers``), graded by an exact oracle.

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
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from solver import FitConfig, fit, make_problem, power_diagram

# (problem, N, d, wall-time goal in seconds or None; docs/benchmarks.md, exact-geometry fits).
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


# ---------------------------------------------------------------------------------------------
# Side by side with the exact peers (``python bench/fit_speed.py --peers --exact-peers``).

# (problem, N, d, goal seconds for this project's fit to exact L1 <= 1e-6, best of 3)
PEER_CASES = [
    ("uniform", 256, 2, 0.008),
    ("grid25", 512, 2, 0.035),
    ("clusters", 2000, 3, 0.5),
    ("uniform", 10000, 2, None),
    ("clusters", 10000, 3, 2.0),
    ("uniform", 100000, 2, 3.0),
    ("clusters", 50000, 3, 20.0),
    ("uniform", 1000000, 2, 40.0),
]
# From this many cells on a solve runs once (not best of 3).
_REPEAT_BELOW = 5000
# Above this many cells the oracle (~0.2 ms a cell) is not run; the fit's own exact L1 is.
ORACLE_MAX_CELLS = 200000


def peer_problem(kind: str, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights of a peer case: ``grid25`` is the 25-Gaussian grid (uniform
    weights), the others as :func:`exact_problem`."""
    if kind == "grid25":
        from bench.mode_collapse import grid_samples

        return grid_samples(n, np.random.default_rng(seed)), np.full(n, 1.0 / n)
    y, v = exact_problem(kind, n, d, seed)
    return y, (np.full(n, 1.0 / n) if v is None else v)


def oracle_measures(
    y: np.ndarray, h: np.ndarray, low: float, high: float, inside: np.ndarray
) -> np.ndarray:
    """Exact cell measures, independent of the code under test.

    Candidate neighbours are the edges of the lower hull of the lifted points (y_i, -h_i)
    (scipy's ConvexHull); each cell is scipy's HalfspaceIntersection of the cube with its
    candidates' half-spaces around ``inside[i]`` (a hint, checked strictly inside, else a
    linear program finds a point), and its measure the ConvexHull volume of the corners. A
    missed candidate would only make cells larger, so the total is checked against 1.

    Raises:
        RuntimeError: the cells do not fill the cube to 1e-9.
    """
    from scipy.optimize import linprog
    from scipy.spatial import ConvexHull, HalfspaceIntersection

    n, d = y.shape
    lifted = np.c_[y, -h]
    lifted -= lifted.mean(axis=0)
    lifted[:, -1] *= np.abs(lifted[:, :-1]).max() / max(np.abs(lifted[:, -1]).max(), 1e-300)
    hull = ConvexHull(lifted)
    lower = hull.simplices[hull.equations[:, d] < 0]
    nbrs: list[set[int]] = [set() for _ in range(n)]
    for simplex in lower:
        for a in simplex:
            nbrs[a].update(int(b) for b in simplex if b != a)
    cube = np.r_[np.c_[np.eye(d), np.full(d, -high)], np.c_[-np.eye(d), np.full(d, low)]]
    out = np.zeros(n)
    for i in range(n):
        if not nbrs[i]:
            continue  # not a lower-hull vertex: empty
        j = np.fromiter(nbrs[i], dtype=np.int64)
        halfspaces = np.r_[np.c_[y[j] - y[i], h[j] - h[i]], cube]  # A x + b <= 0
        point = inside[i]
        slack = halfspaces[:, :d] @ point + halfspaces[:, d] if np.isfinite(point).all() else None
        if slack is None or slack.max() >= -1e-12:
            a, b = halfspaces[:, :d], halfspaces[:, d]
            norm = np.linalg.norm(a, axis=1)
            free = [(None, None)] * d + [(0, None)]
            lp = linprog(np.r_[np.zeros(d), -1.0], A_ub=np.c_[a, norm], b_ub=-b, bounds=free)
            if lp.status != 0 or lp.x[-1] <= 1e-12:
                continue  # no interior: empty
            point = lp.x[:d]
        corners = HalfspaceIntersection(halfspaces, point).intersections
        out[i] = ConvexHull(corners).volume
    if abs(out.sum() - 1.0) > 1e-9:
        raise RuntimeError(f"oracle cells fill {out.sum()!r} of the cube")
    return out


def _graded(y: np.ndarray, h: np.ndarray, v: np.ndarray, low: float, high: float) -> dict:
    """Exact L1 of heights h by the oracle (None above ORACLE_MAX_CELLS) and its seconds."""
    if len(y) > ORACLE_MAX_CELLS:
        return {"oracle_l1": None, "oracle_empty": None}
    hint = power_diagram(y, h, low=low, high=high).centroids  # interior points only
    cells = oracle_measures(y, h, low, high, hint)
    return {
        "oracle_l1": float(np.abs(cells - v).sum()),
        "oracle_empty": int(np.count_nonzero(cells <= 0)),
    }


def exact_peer_rows(
    target: float = 1e-6, budget: float = 360.0, cases: list | None = None
) -> Iterator[dict[str, Any]]:
    """Per case: this project's fit and each exact peer, from the same start, side by side.

    Every method gets the problem and the fit's Voronoi start (every cell non-empty); each
    stops by its own rule at ``target`` and the oracle grades all of them. Wall times: best of
    3 below 5,000 cells, else one run; the CPU time of the same run (all threads: the box is
    shared, and CPU time shows the work when other jobs stretch the wall time). Rows come as
    they are measured.
    """
    from bench.peers import EXACT_PEERS, SDOT_NOTE, run_exact_peer

    for kind, n, d, goal in cases or PEER_CASES:
        y, v = peer_problem(kind, n, d)
        problem = make_problem(y, v)
        targets = problem.targets.astype(np.float64)
        low, high = problem.source.low, problem.source.high
        config = FitConfig(target_l1=target, time_budget=budget)
        # The fit's start: a fit whose budget runs out before its first step returns it.
        opening = fit(problem, replace(config, time_budget=1e-9))
        assert opening.iterations == 0 and opening.reason == "time_budget"
        start = opening.heights
        repeats = 3 if n < _REPEAT_BELOW else 1
        base = {"bench": "solver", "kind": "exact_peers", "problem": kind, "n": n, "d": d}
        base["target_l1"] = target
        load_before = os.getloadavg()[0]
        best, cpu, result = np.inf, np.inf, None
        for _ in range(repeats):
            clock, cpu_clock = time.perf_counter(), time.process_time()
            out = fit(problem, config)
            wall, used = time.perf_counter() - clock, time.process_time() - cpu_clock
            if wall < best:
                best, cpu, result = wall, used, out
        assert result is not None
        yield {
            **base,
            "method": "aeot",
            "reached": result.converged,
            "reason": result.reason,
            "seconds": round(best, 4),
            "cpu_seconds": round(cpu, 4),
            "goal_seconds": goal,
            "iterations": result.iterations,
            "l1": result.accuracy.l1 if result.accuracy else None,
            **_graded(problem.targets.astype(np.float64), result.heights, v, low, high),
            "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        for peer in EXACT_PEERS:
            load_before = os.getloadavg()[0]
            runs = [
                run_exact_peer(peer, targets, problem.weights, start, (low, high), target, budget)
                for _ in range(repeats)
            ]
            done = [r for r in runs if r.heights is not None]
            row: dict[str, Any] = {**base, "method": peer}
            if not done:
                row["skipped"] = runs[0].skipped
            else:
                top = min(done, key=lambda r: r.seconds)
                assert top.heights is not None
                row.update(
                    seconds=round(top.seconds, 4),
                    cpu_seconds=round(top.cpu_seconds, 4),
                    warmup_seconds=round(top.warmup_seconds, 3),
                    iterations=top.iterations,
                    **_graded(targets, top.heights, problem.weights, low, high),
                )
            row["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            yield row
        yield {**base, "method": "sdot", "skipped": SDOT_NOTE}
