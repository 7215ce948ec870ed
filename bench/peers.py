"""Semi-discrete OT solvers of other libraries run as benchmark peers: POT and OTT-JAX (Monte
Carlo, at equal wall time) and pysdot (exact power diagrams in 2D and 3D, to a target L1).

Each peer gets an :class:`~solver.OTProblem`, a wall-time budget in seconds and a seed, runs its
own solver for the budget and returns heights h in this project's convention: the cell of x is
``argmax_i <x, y_i> + h_i``. For the cost ``c(x, y) = |x - y|^2 / 2`` and a dual potential g_j on
the targets, the c-transform assigns x to ``argmin_j c(x, y_j) - g_j``, which is
``argmax_j <x, y_j> - |y_j|^2 / 2 + g_j``, so ``h_j = g_j - |y_j|^2 / 2``; a peer whose cost is
the full ``|x - y|^2`` has ``h_j = g_j / 2 - |y_j|^2 / 2``.

The peers are optional (the ``bench`` extra) and imported only inside their runner: without them
:func:`run_peer` returns a result whose ``skipped`` says ``"not installed"``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from solver import OTProblem, derive_seed


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    """Settings of the peers' solvers (chosen at N = 2,000, d = 16; docs/benchmarks.md).

    Attributes:
        pot_reg: POT's entropic regularisation. Its gradient evaluates exp(-r / reg) with no
            shift, which overflows once the largest height over reg nears 709: 1e-3 turned to
            NaN; 5e-3 and 1e-2 gave the same L1 (0.066, 0.064), and 1e-2 has the headroom.
        pot_lr: POT's step is lr / sqrt(k); 10 had the lowest L1 of {1, 3, 10, 30}.
        pot_samples: size of POT's fixed source sample (it samples rows of a cost matrix);
            2^20 is about the steps it takes in a minute, so few points repeat.
        pot_calibration_steps: steps of the timing run that sizes POT's run to the budget.
            On the shared box that run misjudges a step's cost either way (47 s used of 66 s,
            17.8 s of 16.2 s); the row reports the seconds POT used.
        ott_lr: Adam step of OTT's ``SemidiscreteSolver``.
        ott_batch: fresh source samples per OTT step. With ott_lr, the best pair (L1 0.083 after
            60 s) of (1024, 1e-3), (1024, 3e-3), (2048, 5e-3), (4096, 3e-3), (4096, 1e-2).
        ott_chunk: OTT steps per compiled chunk; the budget is checked between chunks.
    """

    pot_reg: float = 1e-2
    pot_lr: float = 10.0
    pot_samples: int = 1 << 20
    pot_calibration_steps: int = 20_000
    ott_lr: float = 3e-3
    ott_batch: int = 4096
    ott_chunk: int = 10


@dataclass(frozen=True, kw_only=True)
class PeerResult:
    """What one peer returned within its budget.

    Attributes:
        peer: library name (``"pot"`` or ``"ott-jax"``).
        solver: the library function or class that ran, in words.
        heights: h, shape ``(N,)``, float64, mean zero, or None when skipped.
        seconds: wall time of the solver run (compilation excluded, see ``settings``).
        iterations: optimiser steps taken.
        settings: regularisation, step size, sample sizes and other choices.
        skipped: why the peer did not run (e.g. ``"not installed"``), else None.
    """

    peer: str
    solver: str = ""
    heights: np.ndarray | None = None
    seconds: float = 0.0
    iterations: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


def installed(peer: str) -> bool:
    """Whether the peer's package can be imported here."""
    return importlib.util.find_spec(_MODULES[peer]) is not None


def version(peer: str) -> str | None:
    """Installed version of the peer's distribution, or None when it is absent."""
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[peer])
    except importlib.metadata.PackageNotFoundError:
        return None


def run_peer(
    peer: str,
    problem: OTProblem,
    budget: float,
    seed: int,
    config: PeerConfig | None = None,
) -> PeerResult:
    """Run one peer on ``problem`` for about ``budget`` seconds (``PeerConfig()`` by default).

    Raises:
        ValueError: an unknown peer or a budget that is not positive.
    """
    if peer not in _MODULES:
        raise ValueError(f"peer must be one of {sorted(_MODULES)}, got {peer!r}")
    if budget <= 0:
        raise ValueError(f"budget must be > 0 seconds, got {budget}")
    if not installed(peer):
        return PeerResult(peer=peer, skipped="not installed")
    return _RUNNERS[peer](problem, budget, seed, config or PeerConfig())


class _ShiftedCostRows:
    """Rows of the cost matrix of a fixed source sample, computed when POT asks for them.

    POT's averaged SGD reads only ``np.shape(M)`` and one row ``M[i, :]`` per step, so the
    (M, N) matrix is never stored. Row i is ``max_k <x_i, y_k> - <x_i, y_j>``, which differs
    from ``|x_i - y_j|^2 / 2`` by ``|y_j|^2 / 2`` plus a constant of the row: the semi-dual's
    gradient is unchanged by the row constant, and the y-term moves its dual variable to
    exactly our heights h.
    """

    def __init__(self, x: np.ndarray, targets: np.ndarray) -> None:
        self._x = x
        self._y = targets
        self.shape = (x.shape[0], targets.shape[0])

    def __getitem__(self, key: tuple[int, slice]) -> np.ndarray:
        scores = self._y @ self._x[key[0]]
        return scores.max() - scores


def _run_pot(problem: OTProblem, budget: float, seed: int, cfg: PeerConfig) -> PeerResult:
    """POT's ``ot.stochastic.averaged_sgd_entropic_transport`` (Genevay et al. 2016, alg. 2).

    It cannot resume, so a short timing run sizes one run that fills the rest of the budget.
    """
    from ot.stochastic import averaged_sgd_entropic_transport

    start = time.perf_counter()
    x = problem.source.sample(cfg.pot_samples, seed=derive_seed(seed, 1)).astype(np.float64)
    rows = _ShiftedCostRows(x, problem.targets.astype(np.float64))
    a = np.full(cfg.pot_samples, 1.0 / cfg.pot_samples)

    def asgd(steps: int) -> np.ndarray:
        return averaged_sgd_entropic_transport(
            a,
            problem.weights,
            rows,
            cfg.pot_reg,
            numItermax=steps,
            lr=cfg.pot_lr,
            random_state=seed,
        )

    calibration_start = time.perf_counter()
    asgd(cfg.pot_calibration_steps)
    now = time.perf_counter()
    per_step = (now - calibration_start) / cfg.pot_calibration_steps
    steps = max(cfg.pot_calibration_steps, int((budget - (now - start)) / per_step))
    beta = asgd(steps)
    return PeerResult(
        peer="pot",
        solver="ot.stochastic.averaged_sgd_entropic_transport",
        heights=beta - beta.mean(),
        seconds=time.perf_counter() - start,
        iterations=cfg.pot_calibration_steps + steps,
        settings={
            "reg": cfg.pot_reg,
            "lr": cfg.pot_lr,
            "source_samples": cfg.pot_samples,
            "samples_per_step": 1,
            "calibration_steps": cfg.pot_calibration_steps,
        },
    )


def _run_ott(problem: OTProblem, budget: float, seed: int, cfg: PeerConfig) -> PeerResult:
    """OTT-JAX's ``SemidiscreteSolver`` at epsilon = 0, stepped in compiled chunks.

    Fresh source samples every step from ``jax.random.uniform`` on the problem's cube (OTT
    needs a traceable sampler), Adam, and the start h = 0 (``g = |y|^2``) that ``fit`` uses.
    Compilation happens before the clock starts (in the peer's favour) and is reported.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import optax
    from ott.geometry.semidiscrete_pointcloud import SemidiscretePointCloud
    from ott.problems.linear.semidiscrete_linear_problem import SemidiscreteLinearProblem
    from ott.solvers.linear import semidiscrete as sd

    low, high = problem.source.low, problem.source.high
    y = jnp.asarray(problem.targets, dtype=jnp.float32)

    def sampler(rng: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        return jax.random.uniform(rng, shape, dtype=dtype, minval=low, maxval=high)

    geom = SemidiscretePointCloud(sampler, y, epsilon=0.0)
    prob = SemidiscreteLinearProblem(geom, b=jnp.asarray(problem.weights, dtype=jnp.float32))
    # The driver keeps no loss history: the state's logs have length 1 and JAX drops the
    # solver's out-of-range writes to them.
    ott = sd.SemidiscreteSolver(
        num_iterations=1, batch_size=cfg.ott_batch, optimizer=optax.adam(cfg.ott_lr)
    )
    g0 = jnp.sum(y * y, axis=1)
    log = jnp.zeros(1, dtype=jnp.float32)
    state = sd.SemidiscreteState(
        it=jnp.array(0),
        epsilon=jnp.array(0.0),
        g=g0,
        g_ema=g0,
        opt_state=ott.optimizer.init(g0),
        losses=log,
        grad_norms=log,
        errors=log,
    )
    key = jax.random.key(seed)

    def chunk(s: Any) -> Any:
        def body(_: int, s: Any) -> Any:
            return ott.step(jax.random.fold_in(key, s.it), s, prob)

        return jax.lax.fori_loop(0, cfg.ott_chunk, body, s)

    compile_start = time.perf_counter()
    compiled = jax.jit(chunk).lower(state).compile()
    compile_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        state = compiled(state)
        jax.block_until_ready(state.g)
    seconds = time.perf_counter() - start
    g = np.asarray(state.g_ema, dtype=np.float64)
    h = 0.5 * g - 0.5 * np.square(problem.targets.astype(np.float64)).sum(axis=1)
    return PeerResult(
        peer="ott-jax",
        solver="ott.solvers.linear.semidiscrete.SemidiscreteSolver.step (epsilon=0)",
        heights=h - h.mean(),
        seconds=seconds,
        iterations=int(state.it),
        settings={
            "epsilon": 0.0,
            "optimizer": f"adam({cfg.ott_lr})",
            "samples_per_step": cfg.ott_batch,
            "potential_ema": ott.potential_ema,
            "compile_seconds": round(compile_s, 2),
        },
    )


_MODULES = {"pot": "ot", "ott-jax": "ott"}
_DISTRIBUTIONS = {"pot": "pot", "ott-jax": "ott-jax"}
_RUNNERS: dict[str, Callable[[OTProblem, float, int, PeerConfig], PeerResult]] = {
    "pot": _run_pot,
    "ott-jax": _run_ott,
}
PEERS = tuple(_MODULES)


# ---------------------------------------------------------------------------------------------
# Exact 2D/3D peers: semi-discrete OT solvers on exact power diagrams (bench/exact_fit.py).

EXACT_PEERS = ("pysdot",)
# sdot (the newer C++ successor of pysdot) does not run here: its 2026 releases use Python
# 3.12 f-string syntax (this project supports 3.11), and its 2024 releases download Boost when
# they compile at first use (this machine reaches package registries only).
SDOT_NOTE = "not run: sdot 2026.x needs Python >= 3.12; sdot 2024.x downloads Boost while compiling"


@dataclass(frozen=True, kw_only=True)
class ExactPeerResult:
    """What an exact peer returned.

    Attributes:
        peer: distribution name.
        heights: h in this project's convention (cell of x: ``argmax <x, y_i> + h_i``), or None.
        seconds: wall time of the solve (the peer's start-up and compilation excluded: see
            ``warmup_seconds``).
        cpu_seconds: CPU time of the solve (all threads of the peer's process).
        iterations: Newton iterations.
        warmup_seconds: the untimed first call on a tiny problem (module load, compilation).
        skipped: why there are no heights (not installed, unfinished in the budget, failed).
    """

    peer: str
    heights: np.ndarray | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    iterations: int = 0
    warmup_seconds: float = 0.0
    skipped: str | None = None


def run_exact_peer(
    peer: str,
    targets: np.ndarray,
    weights: np.ndarray,
    start: np.ndarray,
    cube: tuple[float, float],
    target_l1: float,
    budget: float,
) -> ExactPeerResult:
    """Solve the semi-discrete problem exactly with ``peer``, from the heights ``start``.

    The peer stops by its own rule set to imply the target: max |cell - weight| <= target / N.
    It runs in a child process killed after ``budget`` seconds.

    Raises:
        ValueError: an unknown peer.
    """
    if peer not in EXACT_PEERS:
        raise ValueError(f"exact peer must be one of {EXACT_PEERS}, got {peer!r}")
    if importlib.util.find_spec(peer) is None:
        return ExactPeerResult(peer=peer, skipped="not installed")
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    args = (targets, weights, start, cube, target_l1)
    proc = ctx.Process(target=_exact_child, args=(peer, args, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(budget):
            return ExactPeerResult(peer=peer, skipped=f"unfinished at {budget:.0f} s")
        result: ExactPeerResult = parent.recv()
        return result
    finally:
        proc.kill()
        proc.join()
        parent.close()


def _exact_child(peer: str, args: tuple[Any, ...], out: Any) -> None:
    try:
        result = _run_pysdot(*args)
    except Exception as err:  # reported, not raised: a peer's failure is a row of the table
        result = ExactPeerResult(peer=peer, skipped=f"failed: {type(err).__name__}: {err}")
    out.send(result)


def _run_pysdot(
    targets: np.ndarray,
    weights: np.ndarray,
    start: np.ndarray,
    cube: tuple[float, float],
    target_l1: float,
) -> ExactPeerResult:
    """pysdot's ``OptimalTransport.adjust_weights`` (damped Newton, scipy's sparse solver).

    pysdot's weights w are those of the power distance |x - y|^2 - w, so w = |y|^2 + 2 h.
    """
    from pysdot import OptimalTransport
    from pysdot.domain_types import ConvexPolyhedraAssembly

    n, d = targets.shape
    low, high = cube

    def solver(y: np.ndarray, v: np.ndarray, h: np.ndarray) -> Any:
        domain = ConvexPolyhedraAssembly()
        # cut_id: pysdot 0.2.16 passes its default -1 to np.uint64, which numpy 2 refuses.
        domain.add_box([low] * d, [high] * d, 1.0, np.iinfo(np.uint64).max)
        lifted = np.square(y).sum(axis=1)
        ot = OptimalTransport(
            positions=y, weights=lifted + 2 * h, domain=domain, masses=v, linear_solver="Scipy"
        )
        ot.set_stopping_criterion(target_l1 / len(y), "max delta masses")
        return ot

    # The first solve in a process loads pysdot's compiled module for this dimension.
    warm_start = time.perf_counter()
    grid = np.stack(np.meshgrid(*[np.linspace(low + 0.25, high - 0.25, 2)] * d), -1)
    tiny = grid.reshape(-1, d) + 1e-3 * np.arange(2**d)[:, None]
    solver(tiny, np.full(2**d, 0.5**d), -0.5 * np.square(tiny).sum(axis=1)).adjust_weights()
    warmup = time.perf_counter() - warm_start
    clock, cpu_clock = time.perf_counter(), time.process_time()
    ot = solver(targets, weights, start)
    ot.adjust_weights()
    seconds, cpu = time.perf_counter() - clock, time.process_time() - cpu_clock
    heights = 0.5 * (np.asarray(ot.get_weights()) - np.square(targets).sum(axis=1))
    return ExactPeerResult(
        peer="pysdot",
        heights=heights - heights.mean(),
        seconds=seconds,
        cpu_seconds=cpu,
        iterations=len(ot.delta_m),
        warmup_seconds=warmup,
    )
