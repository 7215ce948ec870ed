"""The compiled CPU kernel's backends, ``simd`` and ``amx``, and its float64 re-scoring.

:mod:`solver.cells.index` chooses among the backends; this module holds the Python side of
``solver/cells/_simd.c`` (built at install when a C compiler is present): the kernel's
block-major and tile layouts of the targets, the AMX screen's rounding bound and certificate,
and :func:`candidate_scores`, which re-scores each query's own candidate cells in float64
(numpy when the kernel was not built).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from solver.cells.search_pool import float32_queries, like_input, split_queries
from solver.cells.ties import Array

try:  # built by setup.py when the install had a C compiler; FAISS serves the CPU without it.
    from solver.cells import _simd
except ImportError:  # pragma: no cover - exercised only on installs without a compiler
    _simd = None  # type: ignore[assignment]  # every use checks for a missing kernel first

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

# The AMX screen's signature: amx_topk(x, ya, hb, m, d, mode, nk, cw, k, scores, cells).
Screen = Callable[
    [np.ndarray, np.ndarray, np.ndarray, int, int, int, int, int, int, np.ndarray, np.ndarray],
    None,
]


def kernel_available() -> bool:
    """Whether the kernel was built at install (the ``simd`` backend)."""
    return _simd is not None


def amx_available() -> bool:
    """Whether the kernel was built and this CPU and kernel grant AMX-BF16 (the ``amx`` backend)."""
    return _simd is not None and bool(_simd.amx_available())


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


class SimdBackend:
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
        """Write new heights h (shape ``(N,)``) into the padded copy."""
        self._hb[: self._n] = heights

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        """Top-k scores and cells of queries x, shape ``(M, k)`` each, best first."""
        q = float32_queries(x)
        m = q.shape[0]
        scores = np.empty((m, k), dtype=np.float32)
        cells = np.empty((m, k), dtype=np.int64)
        assert _simd is not None  # checked in __init__

        def task(lo: int, hi: int) -> None:
            _simd.topk(
                q[lo:hi], self._yb, self._hb, hi - lo, self._d, k, scores[lo:hi], cells[lo:hi]
            )

        split_queries(m, task)
        return like_input(x, scores, cells)


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
    head = bf16(y)
    parts = [head] if mode == 1 else [head, head, bf16(y - from_bf16(head))]
    width = len(parts) * d
    cw = min(32, width + width % 2)
    nk = -(-width // cw)
    blocks = -(-n // (2 * _SIMD_LANES)) * 2
    expanded = np.zeros((blocks * _SIMD_LANES, nk * cw), dtype=np.uint16)
    expanded[:n, :width] = np.concatenate(parts, axis=1)
    tiles = expanded.reshape(blocks, _SIMD_LANES, nk, cw // 2, 2).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(tiles), nk, cw


def bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even), as uint16 bit patterns."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32 values."""
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


class AmxBackend:
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

    def __init__(self, y: np.ndarray, h: np.ndarray, *, screen: Screen | None = None) -> None:
        """Build the screen's layouts lazily; ``screen`` replaces the tile kernel (a model).

        Args:
            y: targets, shape ``(N, d)``, float32.
            h: heights, shape ``(N,)``, float32.
            screen: a function with the arguments and outputs of the kernel's ``amx_topk``;
                ``None`` takes the kernel (which needs a CPU with AMX-BF16).

        """
        if screen is None:
            if not amx_available():
                raise ValueError("backend 'amx' needs the compiled kernel and a CPU with AMX-BF16")
            screen = _simd.amx_topk
        self._topk = screen
        self._exact = SimdBackend(y, h)
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
        """Write new heights h (shape ``(N,)``) into the exact kernel's and the screen's copies."""
        self._exact.set_heights(heights)
        self._hb[: self._n] = heights
        self._h = heights.astype(np.float64)
        self._h_norm = float(np.abs(self._h).max())

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        """Top-k scores and cells of queries x, shape ``(M, k)`` each, best first (exact)."""
        q = float32_queries(x)
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
        return like_input(x, scores, cells)

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

        def task(lo: int, hi: int) -> None:
            approx = np.empty((hi - lo, kc), dtype=np.float32)
            cand = np.empty((hi - lo, kc), dtype=np.int64)
            self._topk(q[lo:hi], ya, self._hb, hi - lo, self._d, mode, nk, cw, kc, approx, cand)
            best, top = candidate_scores(q[lo:hi], self._y, self._h, cand.astype(np.int32), k)
            bound = approx[:, -1] + amx_error_bound(
                q[lo:hi], self._y_norm, self._h_norm, mode, nk * cw
            )
            open_[lo:hi] = ~(best[:, -1] > bound)
            scores[lo:hi] = best
            cells[lo:hi] = top

        split_queries(m, task)
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
