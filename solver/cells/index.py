"""The cell index: which Laguerre cell holds a point, answered as maximum inner product search.

With a_i = [y_i, h_i] and q(x) = [x, 1], the cell of x is argmax_i <q(x), a_i>: the Brenier
potential u_h(x) = max_i <x, y_i> + h_i is attained there. This is the only module that imports
FAISS or the compiled kernel. Backends share one small interface and are chosen once
(``backend="auto"``):

- ``simd``: the fused CPU kernel of ``solver/cells/_simd.c`` (compiled at install): scores
  stay in vector registers and each query keeps its k best cells, so a search costs the
  multiply-adds alone; 7 to 8x FAISS's flat search at N = 10,000, d = 16 (docs/benchmarks.md,
  cell-query throughput). New heights are written into its padded copy.
- ``amx``: on CPUs with AMX-BF16 tiles, the same kernel's bfloat16 tile screen keeps a few
  more candidates than asked, re-scores them in float64 and certifies each query with a
  rounding bound (:func:`amx_error_bound`); uncertified queries are screened again in a
  split precision, and the few still open go to ``simd``. The result is exact; at
  N = 60,000, d = 32 it is 1.5 to 2.5x ``simd`` (docs/benchmarks.md).
- ``faiss``: FAISS ``IndexFlatIP`` on the CPU (the fallback when the kernel was not built);
  new heights are written in place into the index's stored vectors (only the last column
  changes).
- ``faiss-gpu``: FAISS ``GpuIndexFlatIP`` when FAISS sees a GPU; new heights are re-uploaded.
- ``torch``: chunked ``x @ y.T + h`` and ``topk`` on any torch device (CPU or CUDA).

All backends compute the same float32 scores, so they return the same cells up to near-ties
(pairs whose scores differ by float32 rounding). Equal scores follow one rule on every backend
(:mod:`solver.cells.ties`): the lower cell index wins, and a top-k list is ordered by score
descending, then cell index ascending. NaN or infinite queries, targets and heights are refused
with a ``ValueError`` naming the first bad row. Results come back as the caller's array type:
numpy in, numpy out; a torch tensor in, tensors on the same device out.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol, overload

import numpy as np
import torch

from solver.cells.ties import (
    check_finite,
    check_queries,
    lowest_index_first,
    topk_lowest_index,
)

try:  # faiss-cpu or faiss-gpu; the torch backend works without either.
    import faiss
except ImportError:  # pragma: no cover - exercised only on hosts without faiss
    faiss = None  # type: ignore[assignment]  # every use checks for a missing faiss first

try:  # built by setup.py when the install had a C compiler; FAISS serves the CPU without it.
    from solver.cells import _simd
except ImportError:  # pragma: no cover - exercised only on installs without a compiler
    _simd = None  # type: ignore[assignment]  # every use checks for a missing kernel first

Array = np.ndarray | torch.Tensor

# Score-matrix budget of the torch backend: 2^24 float32 = 64 MiB per chunk whatever M and N.
_TORCH_CHUNK_ELEMENTS = 1 << 24
# Queries per task of the CPU search pool (the simd kernel and FAISS). FAISS's own OpenMP split
# of one search was slower with 2 threads than with 1 on the 2-core box (N = 10,000, d = 16:
# 60-67k vs 110-130k queries/s); one single-threaded call per pool thread on its share of the
# queries gave 157-165k (docs/benchmarks.md, cell-query throughput).
_TASK_QUERIES = 8192
# Cells per vector block of the simd kernel's layout, and the most candidates its re-scoring
# takes per query (solver/cells/_simd.c).
_SIMD_LANES = 16
_SIMD_MAX_CANDIDATES = 64
# Extra cells the AMX screen keeps per query beyond the k asked for, by precision mode, and
# its switch from mode 1 to mode 3: after this many queries, if more than this share stayed
# uncertified (each costs a second screen, in mode 3). Chosen on the clustered N = 60,000,
# d = 32 benchmark targets and the MNIST latents (docs/benchmarks.md, cell-query throughput).
_AMX_EXTRA = {1: 11, 3: 3}
_AMX_MIN_QUERIES = 16384
_AMX_OPEN_SHARE = 0.4
# Below this N d the fixed costs per query (conversion, re-scoring, certificate) outweigh the
# faster products: the exact kernel answers (at N = 10,000, d = 16 it was as fast as AMX).
_AMX_MIN_WORK = 1 << 18


class _Backend(Protocol):
    """What every backend provides; ``CellIndex`` holds exactly one."""

    name: str

    def set_heights(self, heights: np.ndarray) -> None:
        """Replace h (shape ``(N,)``, float32) without touching the targets."""

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        """Top-k scores (descending) and cells of queries x, shape ``(M, k)`` each."""


DeviceKind = Literal["cpu", "cuda"]


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """One cell index backend of the registry.

    Attributes:
        name: what ``backend=`` takes.
        device: where its scores are computed.
        needs: what must be installed or present besides torch, in words.

    """

    name: str
    device: DeviceKind
    needs: str


# Every backend, best first: the fused kernel, then FAISS, then plain torch on each device.
BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(name="triton", device="cuda", needs="triton and a CUDA GPU"),
    BackendSpec(name="faiss-gpu", device="cuda", needs="faiss-gpu and a CUDA GPU"),
    BackendSpec(name="torch-cuda", device="cuda", needs="a CUDA GPU"),
    BackendSpec(
        name="amx",
        device="cpu",
        needs="the kernel compiled at install, a CPU with AMX-BF16 and Linux >= 5.16",
    ),
    BackendSpec(name="simd", device="cpu", needs="the kernel compiled at install (a C compiler)"),
    BackendSpec(name="faiss", device="cpu", needs="faiss-cpu"),
    BackendSpec(name="torch", device="cpu", needs="nothing"),
)


def backend_spec(name: str) -> BackendSpec:
    """The registry entry of backend ``name``; raises ``ValueError`` for an unknown name."""
    for spec in BACKENDS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown backend {name!r}; known: {[spec.name for spec in BACKENDS]}")


def faiss_version() -> str | None:
    """Version of the installed faiss module, ``None`` without faiss."""
    return None if faiss is None else str(faiss.__version__)


def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use (0 without faiss-gpu or without CUDA)."""
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def available_backends(device: DeviceKind | None = None) -> list[str]:
    """Backends usable on this host (on ``device`` when given), best first."""
    usable = {
        "triton": lambda: torch.cuda.is_available() and _fused_available(),
        "faiss-gpu": lambda: torch.cuda.is_available() and faiss_gpu_count() > 0,
        "torch-cuda": torch.cuda.is_available,
        "amx": lambda: _simd is not None and _simd.amx_available(),
        "simd": lambda: _simd is not None,
        "faiss": lambda: faiss is not None,
        "torch": lambda: True,
    }
    return [
        spec.name
        for spec in BACKENDS
        if (device is None or spec.device == device) and usable[spec.name]()
    ]


def backend_for_device(device: DeviceKind) -> str:
    """The best backend available on ``device`` (``"cpu"`` always has one).

    Raises:
        ValueError: no backend runs on ``device`` here (``"cuda"`` without a GPU).

    """
    names = available_backends(device)
    if not names:
        raise ValueError(f"no cell index backend runs on {device!r} here")
    return names[0]


def _fused_available() -> bool:
    """Whether the fused Triton kernel module exists and can run here."""
    if importlib.util.find_spec("solver.cells.triton_index") is None:
        return False
    from solver.cells import triton_index as fused  # noqa: PLC0415 - optional, needs triton and CUDA

    return bool(fused.available())


def resolve_backend(backend: str = "auto") -> str:
    """Turn ``"auto"`` into the best available backend, or check that a named one is usable."""
    if backend != "auto" and backend not in {spec.name for spec in BACKENDS}:
        raise ValueError(f"unknown backend {backend!r}; known: {[spec.name for spec in BACKENDS]}")
    names = available_backends()
    if backend == "auto":
        return names[0]
    if backend not in names:
        raise ValueError(f"backend {backend!r} is not available here; available: {names}")
    return backend


def nearest_neighbours(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest ``points`` (Euclidean) of each query, nearest first.

    A cell index with heights -|y|^2 / 2 ranks points by <x, y> - |y|^2 / 2, which is
    -|x - y|^2 / 2 up to a term of the query alone, so its top-k cells are the k nearest
    points (float32 scores; callers needing exact distances recompute them).

    Returns:
        Shape ``(M, k)``, int64.

    """
    p = np.asarray(points, dtype=np.float64)
    index = CellIndex(p, -0.5 * np.square(p).sum(axis=1))
    found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
    return np.asarray(found, dtype=np.int64)


def candidate_scores(
    x: np.ndarray, y: np.ndarray, h: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores of each query's own candidate cells; the best k of them, best first.

    Args:
        x: queries, shape ``(M, d)``, float32.
        y: targets, shape ``(N, d)``, float32 (each product is formed in float64, so no
            float64 copy of the targets is needed).
        h: heights, shape ``(N,)``, float64.
        candidates: cells per query, shape ``(M, K)``, integers, ``k <= K``.
        k: how many to return.

    Returns:
        ``(scores, cells)``, shape ``(M, k)``: float64 scores and int64 cells (equal scores:
        the lower cell first; a cell listed twice keeps its first place). The compiled kernel
        computes them when it was built (no ``(M, K, d)`` gather), numpy otherwise; both sum
        in float64.

    """
    m, kc = candidates.shape
    if _simd is not None and kc <= _SIMD_MAX_CANDIDATES:
        scores = np.empty((m, k), dtype=np.float64)
        cells = np.empty((m, k), dtype=np.int64)
        _simd.rescore(
            np.ascontiguousarray(x, dtype=np.float32),
            np.ascontiguousarray(y, dtype=np.float32),
            np.ascontiguousarray(h, dtype=np.float64),
            np.ascontiguousarray(candidates, dtype=np.int32),
            m,
            y.shape[1],
            kc,
            k,
            scores,
            cells,
        )
        return scores, cells
    s = np.einsum("bd,bkd->bk", x.astype(np.float64), y[candidates].astype(np.float64))
    s += h[candidates]
    order = np.lexsort((candidates, -s))[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(candidates, order, axis=1)


class CellIndex:
    """Maximum inner product index over augmented targets ``[y_i, h_i]``.

    Args:
        targets: y, shape ``(N, d)``; stored as float32.
        heights: h, shape ``(N,)``; zeros when ``None``.
        backend: ``"auto"`` or one of :func:`available_backends`.

    Example:
        >>> index = CellIndex(np.eye(2), np.zeros(2), backend="torch")
        >>> index.search(np.array([[0.4, -0.1]]), k=1)[1]
        array([[0]])
    """

    def __init__(
        self, targets: np.ndarray, heights: np.ndarray | None = None, backend: str = "auto"
    ) -> None:
        y = np.ascontiguousarray(targets, dtype=np.float32)
        if y.ndim != 2 or y.shape[0] == 0:
            raise ValueError(f"targets must have shape (N, d) with N >= 1, got {y.shape}")
        check_finite(y, "targets")
        self._targets = y
        self._heights = self._check_heights(heights)
        self.backend = resolve_backend(backend)
        self._impl = _make_backend(self.backend, y, self._heights)

    @property
    def targets(self) -> np.ndarray:
        """y, shape ``(N, d)``, float32 (read-only view)."""
        view = self._targets.view()
        view.flags.writeable = False
        return view

    @property
    def heights(self) -> np.ndarray:
        """h, shape ``(N,)``, float32 (a copy)."""
        return self._heights.copy()

    @property
    def n_targets(self) -> int:
        """Number of cells N."""
        return int(self._targets.shape[0])

    @property
    def dim(self) -> int:
        """Dimension d of queries."""
        return int(self._targets.shape[1])

    def set_heights(self, heights: np.ndarray) -> None:
        """Refresh the index for new heights h (shape ``(N,)``); the targets are not rebuilt."""
        self._heights = self._check_heights(heights)
        self._impl.set_heights(self._heights)

    @property
    def sharded(self) -> bool:
        """False: this process holds every target (see ``ShardedIndex``)."""
        return False

    def rows(self, cells: np.ndarray) -> np.ndarray:
        """Targets of the given cells, shape ``(len(cells), d)``, float32."""
        return self._targets[np.asarray(cells, dtype=np.int64)]

    def squared_norms(self) -> np.ndarray:
        """|y_i|^2 of every target, shape ``(N,)``, float64."""
        return np.square(self._targets, dtype=np.float64).sum(axis=1)

    def candidate_scores(
        self, x: np.ndarray, heights: np.ndarray, candidates: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`candidate_scores` of queries x over this index's targets at ``heights``."""
        return candidate_scores(x, self._targets, heights, candidates, k)

    @overload
    def search(self, x: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def search(self, x: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]: ...

    def search(self, x: Array, k: int = 1) -> tuple[Array, Array]:
        """Top-k cells of each query point.

        Args:
            x: queries, shape ``(M, d)``, numpy or torch (any device).
            k: number of cells per query, ``1 <= k <= N``.

        Returns:
            ``(scores, cells)``, each of shape ``(M, k)``, best first (equal scores: lower
            cell first): scores ``<x, y_i> + h_i`` (float32) and cell indices (int64), as numpy
            arrays for numpy input and as tensors on the input's device for torch input.

        Raises:
            ValueError: a bad k or shape, or a query with NaN or inf (its row is named).
        """
        check_queries(x, k, self.n_targets, self.dim)
        return self._impl.search(x, k)

    @overload
    def assign(self, x: np.ndarray) -> np.ndarray: ...

    @overload
    def assign(self, x: torch.Tensor) -> torch.Tensor: ...

    def assign(self, x: Array) -> Array:
        """Cell index (top-1) of each query, shape ``(M,)``."""
        return self.search(x, 1)[1][:, 0]

    def _check_heights(self, heights: np.ndarray | None) -> np.ndarray:
        n = self._targets.shape[0]
        if heights is None:
            return np.zeros(n, dtype=np.float32)
        h = np.ascontiguousarray(heights, dtype=np.float32)
        if h.shape != (n,):
            raise ValueError(f"heights must have shape ({n},), got {h.shape}")
        check_finite(h, "heights", "cell")
        return h


def _make_backend(name: str, y: np.ndarray, h: np.ndarray) -> _Backend:
    if name == "amx":
        return _AmxCPU(y, h)
    if name == "simd":
        return _SimdCPU(y, h)
    if name == "faiss":
        return _FaissCPU(y, h)
    if name == "faiss-gpu":
        return _FaissGPU(y, h)
    if name == "torch":
        return _Torch(y, h, torch.device("cpu"))
    if name == "torch-cuda":
        return _Torch(y, h, torch.device("cuda"))
    if name == "triton":
        from solver.cells import triton_index as fused  # noqa: PLC0415

        return fused.TritonBackend(y, h)
    raise ValueError(f"unknown backend {name!r}")


def _augmented(y: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([y, h[:, None]]), dtype=np.float32)


def _as_numpy_queries(x: Array) -> np.ndarray:
    """[x, 1] as a contiguous float32 numpy array (the FAISS query form)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    q = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    q[:, :-1] = x
    q[:, -1] = 1.0
    return q


def _float32_queries(x: Array) -> np.ndarray:
    """Queries as a contiguous float32 numpy array (the compiled kernel's input)."""
    if isinstance(x, torch.Tensor):
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    return np.ascontiguousarray(x, dtype=np.float32)


def _like(x: Array, scores: np.ndarray, cells: np.ndarray) -> tuple[Array, Array]:
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
    global _POOL  # noqa: PLW0603
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _single_threaded_faiss() -> None:
    if faiss is not None:
        faiss.omp_set_num_threads(1)


def _search_pool() -> ThreadPoolExecutor:
    """One process-wide pool of CPU search threads (FAISS runs one OpenMP thread in each)."""
    global _POOL  # noqa: PLW0603 - created on first use, shared by every index
    if _POOL is None:
        _POOL = ThreadPoolExecutor(
            search_threads(), thread_name_prefix="cell-search", initializer=_single_threaded_faiss
        )
    return _POOL


def _split(m: int, task: Callable[[int, int], None]) -> None:
    """Run ``task(lo, hi)`` over the query ranges of the search pool's tasks.

    One task runs in the caller's thread, so concurrent small searches (a server's requests)
    run side by side instead of queueing for the pool.
    """
    if m <= _TASK_QUERIES:
        task(0, m)
        return
    # list() waits for every task and re-raises the first error.
    starts = range(0, m, _TASK_QUERIES)
    list(_search_pool().map(lambda lo: task(lo, min(lo + _TASK_QUERIES, m)), starts))


def simd_layout(y: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's block-major copy of targets y (N, d) and heights h (N,).

    Returns ``(yb, hb)``: ``yb[b, c, l] = y[16 b + l, c]``, shape ``(ceil(N / 16), d, 16)``, and
    ``hb``, shape ``(16 ceil(N / 16),)``, both float32; padding cells are zero with height -inf.
    """
    n, d = y.shape
    blocks = -(-n // _SIMD_LANES)
    padded = np.zeros((blocks * _SIMD_LANES, d), dtype=np.float32)
    padded[:n] = y
    yb = np.ascontiguousarray(padded.reshape(blocks, _SIMD_LANES, d).transpose(0, 2, 1))
    hb = np.full(blocks * _SIMD_LANES, -np.inf, dtype=np.float32)
    hb[:n] = h
    return yb, hb


class _SimdCPU:
    """The fused kernel (``solver/cells/_simd.c``) over a block-major copy of the targets.

    Cells are padded to a multiple of 16 (padding heights -inf, so they never win) and stored
    as ``yb[b, c, l] = y[16 b + l, c]``: one vector load holds one coordinate of 16 cells.
    The kernel follows the tie rule by itself: it meets each query's cells in index order, a
    cell enters a list only by beating its last score, and it goes after the equal ones.
    """

    name = "simd"

    def __init__(self, y: np.ndarray, h: np.ndarray) -> None:
        if _simd is None:
            raise ValueError(
                "backend 'simd' needs the compiled kernel (reinstall with a C compiler)"
            )
        self._yb, self._hb = simd_layout(y, h)
        self._n, self._d = y.shape

    def set_heights(self, heights: np.ndarray) -> None:
        self._hb[: self._n] = heights

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        q = _float32_queries(x)
        m = q.shape[0]
        scores = np.empty((m, k), dtype=np.float32)
        cells = np.empty((m, k), dtype=np.int64)
        assert _simd is not None  # checked in __init__

        def task(lo: int, hi: int) -> None:
            _simd.topk(
                q[lo:hi], self._yb, self._hb, hi - lo, self._d, k, scores[lo:hi], cells[lo:hi]
            )

        _split(m, task)
        return _like(x, scores, cells)


def amx_layout(y: np.ndarray, mode: int) -> tuple[np.ndarray, int, int]:
    """The AMX screen's tile copy of targets y (N, d) in precision ``mode`` (1 or 3).

    Each cell's vector is expanded to bfloat16 values (mode 1: ``bf16(y)``; mode 3: the head
    ``bf16(y)`` twice and the tail ``bf16(y - head)``, to meet the queries' ``[head, tail,
    head]``), zero-padded to ``nk`` chunks of ``cw`` values (``cw`` even, at most 32), and
    stored per 16-cell block in the tile multiply's pair-interleaved order. The number of
    blocks is even (the kernel scores two blocks at a time); padding cells are zero.

    Returns ``(ya, nk, cw)``: ``ya`` uint16 of shape ``(blocks, nk, cw / 2, 16, 2)``.
    """
    n, d = y.shape
    head = _bf16(y)
    parts = [head] if mode == 1 else [head, head, _bf16(y - _from_bf16(head))]
    width = len(parts) * d
    cw = min(32, width + width % 2)
    nk = -(-width // cw)
    blocks = -(-n // (2 * _SIMD_LANES)) * 2
    expanded = np.zeros((blocks * _SIMD_LANES, nk * cw), dtype=np.uint16)
    expanded[:n, :width] = np.concatenate(parts, axis=1)
    tiles = expanded.reshape(blocks, _SIMD_LANES, nk, cw // 2, 2).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(tiles), nk, cw


def _bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even), as uint16 bit patterns."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def _from_bf16(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def amx_error_bound(
    x: np.ndarray, y_norm: float, h_norm: float, mode: int, width: int
) -> np.ndarray:
    """Per query, a bound on |AMX score - exact score| over all cells (score units).

    For mode 1 each product x_c y_c carries the two bfloat16 roundings (unit roundoff
    u = 2^-8): error <= (2 u + u^2) |x_c| |y_c|. For mode 3 the head and tail of each factor
    leave a remainder of at most u^2 of it and the dropped tail product is at most u^2 (1 + u)^2
    of it: error <= (3 u^2 + 4 u^3) |x_c| |y_c|. Summing over c (Cauchy-Schwarz:
    sum |x_c| |y_c| <= |x| max_j |y_j|) and adding the float32 accumulation of ``width``
    products and the height (gamma_{width+1} of the absolute sum), with 2 % to spare.

    Args:
        x: queries, shape ``(M, d)``.
        y_norm: ``max_j |y_j|``.
        h_norm: ``max_j |h_j|``.
        mode: 1 or 3.
        width: products per score (``nk cw``).

    """
    u = 2.0**-8
    steps = (width + 1) * 2.0**-24
    gamma = steps / (1.0 - steps)
    rel = 2 * u + u * u if mode == 1 else 3 * u * u + 4 * u**3
    s = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)) * y_norm
    return 1.02 * (rel * s + gamma * (1.05 * s + h_norm)) + 1e-30


class _AmxCPU:
    """AMX tiles screen, float64 re-scoring certifies: exact top-k, faster than ``simd``.

    The kernel's ``amx_topk`` returns each query's ``k + extra`` best cells by bfloat16
    scores. Their exact (float64) scores are computed, and the query is certified when its
    k-th best exact score beats the screen's last kept score plus the rounding bound of
    :func:`amx_error_bound`: then no other cell can reach the top k. Queries the one-product
    screen (mode 1) leaves uncertified are screened again in the split precision (mode 3,
    three products, a bound about 170x tighter), and the few left after that are searched by
    the exact float32 kernel (``simd``). The result is therefore the same as that backend's up
    to float32 rounding of ties.

    If more than ``_AMX_OPEN_SHARE`` of an index's queries stay uncertified in mode 1
    (targets whose top scores crowd within its bound), the index screens in mode 3 from then
    on: past that share the second screen costs more than screening once in mode 3.
    """

    name = "amx"

    def __init__(self, y: np.ndarray, h: np.ndarray) -> None:
        if _simd is None or not _simd.amx_available():
            raise ValueError("backend 'amx' needs the compiled kernel and a CPU with AMX-BF16")
        self._exact = _SimdCPU(y, h)
        self._n, self._d = y.shape
        self._y = y
        self._y_norm = float(np.sqrt(np.square(y, dtype=np.float64).sum(axis=1).max()))
        blocks = -(-self._n // (2 * _SIMD_LANES)) * 2
        self._hb = np.full(blocks * _SIMD_LANES, -np.inf, dtype=np.float32)
        self.set_heights(h)
        self._layouts: dict[int, tuple[np.ndarray, int, int]] = {}
        self.mode = 1
        self.screened = self.opened = 0

    def set_heights(self, heights: np.ndarray) -> None:
        self._exact.set_heights(heights)
        self._hb[: self._n] = heights
        self._h = heights.astype(np.float64)
        self._h_norm = float(np.abs(self._h).max())

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        q = _float32_queries(x)
        if k + _AMX_EXTRA[3] >= self._n or self._n * self._d < _AMX_MIN_WORK:
            return self._exact.search(x, k)
        scores, cells, open_ = self._screen(q, k, self.mode)
        rows = np.flatnonzero(open_)
        self._account(q.shape[0], rows.size)
        if rows.size and self.mode == 1:  # the split precision certifies nearly all of them
            s3, c3, open3 = self._screen(q[rows], k, 3)
            scores[rows], cells[rows] = s3, c3
            rows = rows[open3]
        if rows.size:
            scores[rows], cells[rows] = self._exact.search(q[rows], k)
        return _like(x, scores, cells)

    def _screen(
        self, q: np.ndarray, k: int, mode: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Screened, re-scored top-k of queries q in precision ``mode``, and which are open."""
        kc = min(self._n, k + _AMX_EXTRA[mode], _SIMD_MAX_CANDIDATES)
        m = q.shape[0]
        ya, nk, cw = self._layout(mode)
        scores = np.empty((m, k), dtype=np.float32)
        cells = np.empty((m, k), dtype=np.int64)
        open_ = np.zeros(m, dtype=bool)
        assert _simd is not None  # checked in __init__

        def task(lo: int, hi: int) -> None:
            approx = np.empty((hi - lo, kc), dtype=np.float32)
            cand = np.empty((hi - lo, kc), dtype=np.int64)
            _simd.amx_topk(q[lo:hi], ya, self._hb, hi - lo, self._d, mode, nk, cw, kc, approx, cand)
            best, top = candidate_scores(q[lo:hi], self._y, self._h, cand.astype(np.int32), k)
            bound = approx[:, -1] + amx_error_bound(
                q[lo:hi], self._y_norm, self._h_norm, mode, nk * cw
            )
            open_[lo:hi] = ~(best[:, -1] > bound)
            scores[lo:hi] = best
            cells[lo:hi] = top

        _split(m, task)
        return scores, cells, open_

    def _layout(self, mode: int) -> tuple[np.ndarray, int, int]:
        if mode not in self._layouts:
            self._layouts[mode] = amx_layout(self._y, mode)
        return self._layouts[mode]

    def _account(self, m: int, opened: int) -> None:
        self.screened += m
        self.opened += opened
        if (
            self.mode == 1
            and self.screened >= _AMX_MIN_QUERIES
            and self.opened > _AMX_OPEN_SHARE * self.screened
        ):
            self.mode = 3
            self.screened = self.opened = 0


class _FaissCPU:
    """``IndexFlatIP`` searched by a thread pool (FAISS frees the GIL), one OpenMP thread each.

    FAISS orders equal scores its own way: each search takes one cell more than asked and
    :func:`solver.cells.ties.lowest_index_first` applies the tie rule.
    """

    name = "faiss"

    def __init__(self, y: np.ndarray, h: np.ndarray) -> None:
        if faiss is None:
            raise ValueError("backend 'faiss' needs faiss-cpu (pip install 'aeot[cpu]')")
        self._index = faiss.IndexFlatIP(y.shape[1] + 1)
        self._index.add(_augmented(y, h))
        n, width = y.shape[0], y.shape[1] + 1
        self._n = n
        # A writable view of the index's own storage: a refresh rewrites only the h column.
        self._stored = faiss.rev_swig_ptr(self._index.get_xb(), n * width).reshape(n, width)

    def set_heights(self, heights: np.ndarray) -> None:
        self._stored[:, -1] = heights

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        q = _as_numpy_queries(x)
        scores, cells = self._search(q, min(k + 1, self._n))
        scores, cells = lowest_index_first(
            scores, cells, k, lambda rows, width: self._search(q[rows], width), self._n
        )
        return _like(x, np.ascontiguousarray(scores), np.ascontiguousarray(cells))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if q.shape[0] <= _TASK_QUERIES:
            # One task in the caller's thread, with one OpenMP thread as in the pool (the
            # setting is the calling thread's own, restored after).
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, cells = self._index.search(q, k)
            finally:
                faiss.omp_set_num_threads(threads)
            return scores, cells
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        cells = np.empty((q.shape[0], k), dtype=np.int64)

        def task(lo: int, hi: int) -> None:
            scores[lo:hi], cells[lo:hi] = self._index.search(q[lo:hi], k)

        _split(q.shape[0], task)
        return scores, cells


class _FaissGPU:  # pragma: no cover - needs faiss-gpu and CUDA
    name = "faiss-gpu"

    def __init__(self, y: np.ndarray, h: np.ndarray) -> None:
        self._resources = faiss.StandardGpuResources()
        self._index = faiss.GpuIndexFlatIP(self._resources, y.shape[1] + 1)
        self._y = y
        self._index.add(_augmented(y, h))

    def set_heights(self, heights: np.ndarray) -> None:
        # GpuIndexFlat has no in-place update; re-uploading N x (d+1) floats costs microseconds.
        self._index.reset()
        self._index.add(_augmented(self._y, heights))

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        q = _as_numpy_queries(x)
        n = self._y.shape[0]
        scores, cells = self._index.search(q, min(k + 1, n))
        scores, cells = lowest_index_first(
            scores, cells, k, lambda rows, width: self._index.search(q[rows], width), n
        )
        return _like(x, np.ascontiguousarray(scores), np.ascontiguousarray(cells))


class _Torch:
    name = "torch"

    def __init__(self, y: np.ndarray, h: np.ndarray, device: torch.device) -> None:
        self._device = device
        self._yt = torch.from_numpy(y).to(device).T.contiguous()  # (d, N)
        self._h = torch.from_numpy(h).to(device)

    def set_heights(self, heights: np.ndarray) -> None:
        self._h.copy_(torch.from_numpy(heights))

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        xt = xt.to(self._device, torch.float32)
        n = self._h.shape[0]
        chunk = max(1, _TORCH_CHUNK_ELEMENTS // n)
        scores = torch.empty((xt.shape[0], k), dtype=torch.float32, device=self._device)
        cells = torch.empty((xt.shape[0], k), dtype=torch.int64, device=self._device)
        for lo in range(0, xt.shape[0], chunk):
            block = torch.addmm(self._h, xt[lo : lo + chunk], self._yt)
            scores[lo : lo + chunk], cells[lo : lo + chunk] = topk_lowest_index(block, k)
        if isinstance(x, torch.Tensor):
            return scores.to(x.device), cells.to(x.device)
        return scores.cpu().numpy(), cells.cpu().numpy()


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
        ValueError: without faiss.
    """
    if faiss is None:
        raise ValueError("ivf_recall needs faiss-cpu")
    a = _augmented(np.asarray(targets, np.float32), np.asarray(heights, np.float32))
    a64 = a.astype(np.float64)
    norms = np.square(a64).sum(axis=1)
    lifted = np.hstack([a64, np.sqrt(norms.max() - norms)[:, None]]).astype(np.float32)
    q = _as_numpy_queries(np.asarray(queries, np.float32))
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
