"""Certified reuse of a fixed sample set's searches across height changes (exact, not approximate).

A Newton stage evaluates the cell measures of one fixed sample set at many heights (each step
and each trial of its line search). A full search costs O(N d) per sample; but after a small
height change most samples keep their cells, and that can be certified cheaply:

At reference heights h0 keep, for each sample x, its K best cells C(x) and the (K+1)-th best
score s_{K+1}(x; h0). Every cell j outside C(x) scores at new heights h

    <x, y_j> + h_j = s_j(x; h0) + (h_j - h0_j) <= s_{K+1}(x; h0) + max_j (h_j - h0_j) =: b(x; h).

Re-score the K candidates at h exactly (O(K d)); if the second best of them beats b(x; h), the
top-2 cells and scores of x are exact without looking at the other N - K cells. The 1 % of cells
with the largest increases h_j - h0_j are scored exactly for every sample instead, and b uses
the largest increase among the rest (one rescued cell would otherwise void every certificate).
Only the uncertified samples go to the full index search, which also refreshes their entries.

:class:`ReuseIndex` wraps a cell index and offers the same ``search``: a batch it has seen
before (recognised by its size and a fingerprint of its rows) is answered from its entry,
any other batch by a full search that creates the entry. So every estimator (host, fused,
distributed) reuses without knowing it; callers :meth:`ReuseIndex.clear` it when the sample
set changes. Memory: ``K b + 4`` bytes per sample (cells in ``b = 2`` bytes when N <= 65,536,
else 4; the bound in float32, rounded up), and the entries of one pass share one copy of
their reference heights. Past ``max_bytes`` of entries, further batches are searched in full
every time instead of being kept (exact either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from solver.cells.index import CellIndex
from solver.cells.ties import check_queries
from solver.estimation.sharded import ShardedIndex

Array = np.ndarray | torch.Tensor

# Candidates kept per sample. Measured on N = 2,000, d = 16 clustered targets (whole fit, CPU
# seconds, one thread): K = 4 took 22.3 s, K = 8 25.3 s (its wider first searches cost more
# than the extra certificates save), no reuse 28.4 s.
DEFAULT_CANDIDATES = 4
# Guard against float32 rounding of the index's scores (absolute, in score units; the
# internal frame keeps scores of order 1): a certificate needs at least this much margin.
_GUARD = 1e-5
# Share of the cells, those with the largest height increases, scored exactly by every
# certificate instead of setting the bound for all (costs about this share of a full search).
_OUTLIER_SHARE = 0.01
# A batch whose uncertified share exceeds this is re-searched whole at the new heights, which
# then become its reference (later bounds are tighter).
_REFRESH_SHARE = 0.5
# Rows per chunk of entry storage (64 batches of 65,536 samples; 16 to 80 MB by K and N).
_CHUNK_ROWS = 1 << 22


@dataclass
class _Entry:
    """One batch's candidates at its reference heights."""

    fingerprint: bytes
    reference: np.ndarray  # h0, shape (N,), float64, shared by the entries made at h0
    cells: np.ndarray  # (B, K) uint16 or int32, the K best cells at their search heights
    bound: np.ndarray  # (B,) float32 rounded up, s_{K+1} shifted to the reference h0


class _Slab:
    """Append-only storage of the entries' cells and bounds, in chunks of ``_CHUNK_ROWS`` rows.

    Entries are views into a few large chunks (allocated outside the heap the per-batch
    temporaries come from), not one allocation each: interleaved with those temporaries,
    per-entry arrays kept the heap from shrinking (measured at N = 10,000, d = 16: RSS grew
    by about twice the entries' bytes over a 16 M-sample pass, by their bytes with chunks).
    """

    def __init__(self, k: int, cells: np.dtype) -> None:
        self._k, self._dtype = k, cells
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self._used = _CHUNK_ROWS

    def take(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh ``(cells (rows, K), bound (rows,))`` views, valid until :meth:`clear`."""
        if rows > _CHUNK_ROWS:
            return np.empty((rows, self._k), self._dtype), np.empty(rows, np.float32)
        if self._used + rows > _CHUNK_ROWS:
            chunk = (
                np.empty((_CHUNK_ROWS, self._k), self._dtype),
                np.empty(_CHUNK_ROWS, np.float32),
            )
            self._chunks.append(chunk)
            self._used = 0
        cells, bound = self._chunks[-1]
        lo, self._used = self._used, self._used + rows
        return cells[lo : self._used], bound[lo : self._used]

    def clear(self) -> None:
        """Drop every chunk."""
        self._chunks.clear()
        self._used = _CHUNK_ROWS


def entry_bytes(n_targets: int, candidates: int) -> int:
    """Bytes an entry keeps per sample for N cells and K candidates (see the module docstring)."""
    return candidates * _cell_dtype(n_targets).itemsize + 4


def _cell_dtype(n_targets: int) -> np.dtype:
    return np.dtype(np.uint16 if n_targets <= 1 << 16 else np.int32)


def _round_up(bound: np.ndarray) -> np.ndarray:
    """float64 bounds as float32 no smaller than them (a stored bound must stay a bound)."""
    out = bound.astype(np.float32)
    low = out < bound
    out[low] = np.nextafter(out[low], np.float32(np.inf))
    return out


@dataclass(frozen=True, kw_only=True)
class ReuseStats:
    """How many sample queries were certified and how many went to the full search."""

    certified: int
    searched: int


class ReuseIndex:
    """A cell index that reuses each seen batch's candidates under a certificate.

    Args:
        index: the exact cell index (its heights are set through this wrapper).
        candidates: K, cells kept per sample (>= 2; at most N - 1 are used).
        max_bytes: most bytes of entries kept (``None``: no limit); batches past it are
            searched in full each time.

    """

    def __init__(
        self,
        index: CellIndex | ShardedIndex,
        *,
        candidates: int = DEFAULT_CANDIDATES,
        max_bytes: int | None = None,
    ) -> None:
        if candidates < 2:
            raise ValueError(f"candidates must be >= 2, got {candidates}")
        self._index = index
        self._k = min(candidates, index.n_targets - 1)
        self._h = index.heights.astype(np.float64)
        self._entries: dict[bytes, _Entry] = {}
        n = index.n_targets
        self._cells = _cell_dtype(n)
        self._outliers = int(_OUTLIER_SHARE * n) if n - int(_OUTLIER_SHARE * n) >= 2 else 0
        self._max_bytes = max_bytes
        self._slab = _Slab(self._k, self._cells)
        self._kept = 0
        self._certified = self._searched = 0

    @property
    def n_targets(self) -> int:
        """Number of cells N."""
        return self._index.n_targets

    @property
    def dim(self) -> int:
        """Dimension d of queries."""
        return self._index.dim

    @property
    def targets(self) -> np.ndarray:
        """y, shape ``(N, d)``, float32 (read-only view; not for a sharded index)."""
        return self._index.targets  # type: ignore[union-attr]

    @property
    def sharded(self) -> bool:
        """Whether the wrapped index is split over ranks (then every call is collective)."""
        return self._index.sharded

    @property
    def heights(self) -> np.ndarray:
        """The wrapped index's heights, shape ``(N,)``, float32."""
        return self._index.heights

    def squared_norms(self) -> np.ndarray:
        """|y_i|^2 of every target, shape ``(N,)``, float64."""
        return self._index.squared_norms()

    @property
    def backend(self) -> str:
        """The wrapped index's backend."""
        return self._index.backend

    @property
    def stats(self) -> ReuseStats:
        """Certified and searched sample queries since the last :meth:`clear`."""
        return ReuseStats(certified=self._certified, searched=self._searched)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the entries kept now (cells and bounds)."""
        return self._kept

    def clear(self) -> None:
        """Forget every batch (call when the sample set changes)."""
        self._entries.clear()
        self._slab.clear()
        self._kept = 0
        self._certified = self._searched = 0

    def set_heights(self, heights: np.ndarray) -> None:
        """New heights h, shape ``(N,)``; entries stay valid (their bounds account for it)."""
        self._index.set_heights(heights)
        self._h = self._index.heights.astype(np.float64)

    @overload
    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def search(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        """Top-k cells of queries x (shape ``(M, d)``), exactly as a full search, k <= K."""
        check_queries(x, k, self.n_targets, self.dim)
        if self._k < 2 or not 1 <= k <= self._k:
            return self._index.search(x, k)
        xn = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        scores, cells = self._top(np.ascontiguousarray(xn, dtype=np.float32), k)
        if isinstance(x, torch.Tensor):
            return torch.from_numpy(scores).to(x.device), torch.from_numpy(cells).to(x.device)
        return scores, cells

    def _top(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        key = _fingerprint(x)
        entry = self._entries.get(key)
        if entry is None:
            self._searched += x.shape[0]
            return self._fresh(x, key, k)
        scores, cells = self._rescore(x, entry.cells, k)
        open_ = scores[:, k - 1] - _GUARD <= self._outside_bound(x, entry)
        n_open = int(np.count_nonzero(open_))
        self._certified += x.shape[0] - n_open
        self._searched += n_open
        if n_open > _REFRESH_SHARE * x.shape[0]:
            return self._fresh(x, key, k)
        if n_open:
            rows = np.flatnonzero(open_)
            top_s, top_c = self._numpy_search(x[rows], self._k + 1)
            shift = float(np.max(entry.reference - self._h))
            entry.cells[rows] = top_c[:, : self._k]
            entry.bound[rows] = _round_up(top_s[:, self._k].astype(np.float64) + shift + _GUARD)
            scores[rows], cells[rows] = self._rescore(x[rows], entry.cells[rows], k)
        return scores, cells

    def _outside_bound(self, x: np.ndarray, entry: _Entry) -> np.ndarray:
        """Per sample, an upper bound on the score of every cell outside its candidates.

        A non-candidate j scores s_j(h0) + dh_j <= bound + dh_j. The few cells with the largest
        height increases (a rescued or thin cell after a Newton step) would set max_j dh_j for
        all: they are scored exactly instead (a search of those cells alone, their candidates
        masked out), and the others share the bound with the largest remaining increase.
        """
        dh = self._h - entry.reference
        u = self._outliers
        bound = entry.bound.astype(np.float64)
        if u == 0:
            return bound + float(dh.max())
        cut = dh.size - u
        order = np.argpartition(dh, cut - 1)
        big, rest = order[cut:], float(dh[order[cut - 1]])
        outliers = CellIndex(self._index.rows(big), self._h[big], backend=self._index.backend)
        scores, local = (np.asarray(a) for a in outliers.search(x, 1))
        exact = scores[:, 0].astype(np.float64)
        # Where the best outlier is one of the sample's candidates, the best non-candidate
        # outlier is among its K + 1 best (few samples: those in or beside a moved cell).
        own = np.flatnonzero((big[local[:, 0], None] == entry.cells).any(axis=1))
        if own.size:
            s_own, l_own = (np.asarray(a) for a in outliers.search(x[own], min(self._k + 1, u)))
            hit = (big[l_own][:, :, None] == entry.cells[own][:, None, :]).any(axis=2)
            exact[own] = np.where(hit, -np.inf, s_own.astype(np.float64)).max(axis=1)
        return np.maximum(bound + rest, exact + _GUARD)

    def _fresh(self, x: np.ndarray, key: bytes, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Full search of a batch at the current heights, which become its entry's reference.

        Returns the top-k re-scored exactly, as a certified answer is: the index's own float32
        scores differ from those in the last bits, and a fit's next step depends on them, so
        returning them made a batch's first pass differ from its later ones, and a fit resumed
        from a checkpoint (its entries gone) drifted from the uninterrupted fit. A batch that had
        an entry gets it rewritten in place; a new one is kept only within ``max_bytes`` (past
        it the batch answers the same way, so the answer never depends on what else the budget
        holds).
        """
        entry = self._entries.get(key)
        size = x.shape[0] * (self._k * self._cells.itemsize + 4)
        top_s, top_c = self._numpy_search(x, self._k + 1)
        if entry is None and self._max_bytes is not None and self._kept + size > self._max_bytes:
            cells = np.ascontiguousarray(top_c[:, : self._k], dtype=self._cells)
            return self._rescore(x, cells, k)
        if entry is None:
            cells, bound = self._slab.take(x.shape[0])
            entry = _Entry(key, self._h, cells, bound)
            self._entries[key] = entry
            self._kept += size
        entry.cells[:] = top_c[:, : self._k]
        entry.bound[:] = _round_up(top_s[:, self._k].astype(np.float64) + _GUARD)
        # self._h is replaced, never written, on new heights: the entries of one pass share it.
        entry.reference = self._h
        return self._rescore(x, entry.cells, k)

    def _numpy_search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The wrapped index's full search (numpy in, numpy out)."""
        scores, cells = self._index.search(x, k)
        return np.asarray(scores), np.asarray(cells)

    def _rescore(self, x: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact (float64) scores of the candidates at the current heights; the best k."""
        best, cells = self._index.candidate_scores(x, self._h, cand, k)
        return best.astype(np.float32), cells


def _fingerprint(x: np.ndarray) -> bytes:
    """Identify a batch by its shape and a few rows (distinct streams never share them)."""
    rows = np.concatenate([x[:2], x[-2:], x[x.shape[0] // 2 : x.shape[0] // 2 + 1]])
    return np.array(x.shape, dtype=np.int64).tobytes() + rows.tobytes()
