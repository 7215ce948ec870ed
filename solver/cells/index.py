"""The cell index: which Laguerre cell holds a point, answered as maximum inner product search.

With a_i = [y_i, h_i] and q(x) = [x, 1], the cell of x is argmax_i <q(x), a_i>: the Brenier
potential u_h(x) = max_i <x, y_i> + h_i is attained there. This is the only module that imports
FAISS; the compiled kernel's backends live in :mod:`solver.cells.simd_index`. Backends share one
small interface and are chosen once (``backend="auto"``):

- ``simd``: the fused CPU kernel of ``solver/cells/_simd.c`` (compiled at install): scores
  stay in vector registers and each query keeps its k best cells, so a search costs the
  multiply-adds alone; 7 to 8x FAISS's flat search at N = 10,000, d = 16 (docs/benchmarks.md,
  cell-query throughput). New heights are written into its padded copy.
- ``amx``: on CPUs with AMX-BF16 tiles, the same kernel's bfloat16 tile screen keeps a few
  more candidates than asked, re-scores them in float64 and certifies each query with a
  rounding bound (:func:`~solver.cells.simd_index.amx_error_bound`); uncertified queries are
  screened again in a split precision, and the few still open go to ``simd``. The result is
  exact; at N = 60,000, d = 32 it is 1.5 to 2.5x ``simd`` (docs/benchmarks.md).
- ``faiss``: FAISS ``IndexFlatIP`` on the CPU (the fallback when the kernel was not built);
  new heights are written in place into the index's stored vectors (only the last column
  changes).
- ``faiss-gpu``: FAISS ``GpuIndexFlatIP`` when FAISS sees a GPU; new heights are re-uploaded;
  CUDA tensor queries are answered into tensors on their device (no host round trip).
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
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload

import numpy as np
import torch

from solver.cells import simd_index
from solver.cells.search_pool import TASK_QUERIES, like_input, split_queries
from solver.cells.simd_index import candidate_scores
from solver.cells.ties import (
    Array,
    check_finite,
    check_queries,
    lowest_index_first,
    lowest_index_first_tensors,
    topk_lowest_index,
)

try:  # faiss-cpu or faiss-gpu; the torch backend works without either.
    import faiss
except ImportError:  # pragma: no cover - exercised only on hosts without faiss
    faiss = None  # type: ignore[assignment]  # every use checks for a missing faiss first

# Score-matrix budget of the torch backend: 2^24 float32 = 64 MiB per chunk whatever M and N.
_TORCH_CHUNK_ELEMENTS = 1 << 24


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
        "amx": simd_index.amx_available,
        "simd": simd_index.kernel_available,
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
    from solver.cells import triton_index as fused  # optional, needs triton and CUDA

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
        return simd_index.AmxBackend(y, h)
    if name == "simd":
        return simd_index.SimdBackend(y, h)
    if name == "faiss":
        return _FaissCPU(y, h)
    if name == "faiss-gpu":
        return _FaissGPU(y, h)
    if name == "torch":
        return _Torch(y, h, torch.device("cpu"))
    if name == "torch-cuda":
        return _Torch(y, h, torch.device("cuda"))
    if name == "triton":
        from solver.cells import triton_index as fused

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
        return like_input(x, np.ascontiguousarray(scores), np.ascontiguousarray(cells))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if q.shape[0] <= TASK_QUERIES:
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
            faiss.omp_set_num_threads(1)  # this pool thread's own setting: one FAISS thread
            scores[lo:hi], cells[lo:hi] = self._index.search(q[lo:hi], k)

        split_queries(q.shape[0], task)
        return scores, cells


class _FaissGPU:  # pragma: no cover - needs faiss-gpu and CUDA
    """``GpuIndexFlatIP``: CUDA tensor queries are answered into tensors on their device.

    numpy queries (and CPU tensors) take FAISS's host path, which copies them in and the
    results out; a CUDA tensor's results are written by FAISS straight into device tensors
    (:func:`faiss_search_tensors`), so a GPU caller's results never visit the host.
    """

    name = "faiss-gpu"

    def __init__(self, y: np.ndarray, h: np.ndarray) -> None:
        self._resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = torch.cuda.current_device()  # as every CUDA backend: torch's device
        self._device = torch.device("cuda", config.device)
        self._index = faiss.GpuIndexFlatIP(self._resources, y.shape[1] + 1, config)
        self._y = y
        self._index.add(_augmented(y, h))

    def set_heights(self, heights: np.ndarray) -> None:
        # GpuIndexFlat has no in-place update; re-uploading N x (d+1) floats costs microseconds.
        self._index.reset()
        self._index.add(_augmented(self._y, heights))

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        n = self._y.shape[0]
        if isinstance(x, torch.Tensor) and x.is_cuda:
            q = tensor_queries(x, self._device)
            scores_t, cells_t = faiss_topk_tensors(self._index, q, k, n, self._resources)
            return scores_t.to(x.device), cells_t.to(x.device)
        q_np = _as_numpy_queries(x)
        scores, cells = self._index.search(q_np, min(k + 1, n))
        scores, cells = lowest_index_first(
            scores, cells, k, lambda rows, width: self._index.search(q_np[rows], width), n
        )
        return like_input(x, np.ascontiguousarray(scores), np.ascontiguousarray(cells))


def tensor_queries(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[x, 1] as a contiguous float32 tensor on ``device`` (the FAISS query form)."""
    xt = x.detach().to(device, torch.float32)
    return torch.cat([xt, xt.new_ones((xt.shape[0], 1))], dim=1).contiguous()


def faiss_topk_tensors(
    index: Any, q: torch.Tensor, k: int, n: int, resources: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cells of queries q (``[x, 1]``, see :func:`tensor_queries`) by the tie rule.

    FAISS orders equal scores its own way: it searches k + 1 cells and
    :func:`solver.cells.ties.lowest_index_first_tensors` repairs the rows with a tie (on the
    host; all other rows stay on q's device).

    Returns:
        ``(scores, cells)``, shape ``(M, k)``, float32 and int64 tensors on q's device.

    """

    def deeper(rows: np.ndarray, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        return faiss_search_tensors(index, q[torch.from_numpy(rows).to(q.device)], width, resources)

    found = faiss_search_tensors(index, q, min(k + 1, n), resources)
    return lowest_index_first_tensors(*found, k, deeper, n)


def faiss_search_tensors(
    index: Any, q: torch.Tensor, k: int, resources: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of FAISS ``index`` for queries q, written straight into tensors on q's device.

    The pointer hand-off of FAISS's ``contrib/torch_utils`` without importing that module
    (which replaces the search methods of every FAISS index class when imported): FAISS reads
    q and writes the scores and cells through the tensors' addresses. On a GPU it runs on
    torch's current stream (``resources``: the index's ``StandardGpuResources``), so what
    torch queued before is done first and what it queues after waits for the search. A CPU
    index takes CPU tensors the same way.

    Args:
        index: a FAISS index of dimension ``q.shape[1]`` on q's device.
        q: queries, shape ``(M, D)``, contiguous float32.
        k: results per query.
        resources: the GPU index's resources (needed for CUDA tensors).

    Returns:
        ``(scores, cells)``, shape ``(M, k)``: float32 and int64 tensors on q's device.

    Raises:
        ValueError: q is not a contiguous float32 matrix of the index's dimension, or a CUDA
            tensor comes without the GPU resources.

    """
    if q.dtype != torch.float32 or q.ndim != 2 or not q.is_contiguous() or q.shape[1] != index.d:
        raise ValueError(
            f"queries must be a contiguous float32 (M, {index.d}) tensor, "
            f"got {q.dtype} {tuple(q.shape)}"
        )
    m = q.shape[0]
    scores = torch.empty((m, k), dtype=torch.float32, device=q.device)
    cells = torch.empty((m, k), dtype=torch.int64, device=q.device)
    args = (
        m,
        faiss.cast_integer_to_float_ptr(q.data_ptr()),
        k,
        faiss.cast_integer_to_float_ptr(scores.data_ptr()),
        faiss.cast_integer_to_idx_t_ptr(cells.data_ptr()),
    )
    if not q.is_cuda:
        index.search_c(*args)
        return scores, cells
    if resources is None:  # pragma: no cover - needs faiss-gpu and CUDA
        raise ValueError("a CUDA search needs the index's GPU resources")
    device = q.device.index if q.device.index is not None else torch.cuda.current_device()
    prior = resources.getDefaultStream(device)
    cuda_stream = torch.cuda.current_stream(device).cuda_stream
    stream = faiss.cast_integer_to_cudastream_t(cuda_stream)  # type: ignore[attr-defined]  # GPU builds only
    resources.setDefaultStream(device, stream)
    try:
        index.search_c(*args)
    finally:
        resources.setDefaultStream(device, prior)
    return scores, cells


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
