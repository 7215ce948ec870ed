"""A cell index whose targets are split over the ranks of a ``torch.distributed`` group.

Rank r of W holds the contiguous rows ``shard_bounds(N, W, r)`` of the targets (and their part
of the index: kernel layouts, device keys), so the N x d part of the memory of a fit divides
by W; the O(N) vectors (heights, weights, counts) stay whole on every rank. Every operation
is collective (every rank calls it with the same arguments):

- :meth:`ShardedIndex.search`: each rank searches the queries against its slice, the ranks'
  top-k lists are all-gathered and merged (``W x M x k`` scores and cells per call);
- :meth:`ShardedIndex.rows`: target rows of given cells (their owners fill them in, an
  all-reduce sums);
- :meth:`ShardedIndex.candidate_scores`: float64 scores of given candidate cells (their owners
  score them, an all-reduce takes the maximum).

With the same backend on every rank, a search gives the cells and scores of one process's
:class:`~solver.cells.index.CellIndex` over all targets (ties included: the ranks' lists are
merged by a stable sort, and the ranks hold ascending slices).
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
import torch.distributed as dist

from solver.cells.index import CellIndex
from solver.cells.simd_index import candidate_scores
from solver.cells.ties import check_finite, check_queries

Array = np.ndarray | torch.Tensor


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of N targets held by ``rank`` of ``world_size`` (sizes differ by <= 1)."""
    if not 0 <= rank < world_size or n < world_size:
        raise ValueError(
            f"need 0 <= rank < world_size <= n, got rank={rank}, world_size={world_size}, n={n}"
        )
    return rank * n // world_size, (rank + 1) * n // world_size


def comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Return the device of ``group``'s collectives: this rank's GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ShardedIndex:
    """A cell index over targets split across the ranks of a process group (see module doc).

    Args:
        targets: all N targets y, shape ``(N, d)``; the rank keeps a copy of its slice only.
            With ``n_targets`` given instead, ``targets`` is this rank's slice already (rows
            ``shard_bounds(n_targets, W, rank)``), as a sharded fit hands it out.
        heights: all N heights, shape ``(N,)``; zeros when ``None``.
        n_targets: N when ``targets`` is the local slice.
        backend: index backend of the local slice (``"auto"`` or a name).
        group: process group (default: the world).

    """

    sharded = True

    def __init__(
        self,
        targets: np.ndarray,
        heights: np.ndarray | None = None,
        *,
        n_targets: int | None = None,
        backend: str = "auto",
        group: dist.ProcessGroup | None = None,
    ) -> None:
        y = np.asarray(targets)
        if y.ndim != 2:
            raise ValueError(f"targets must have shape (N, d), got {y.shape}")
        self._group = group
        self._world = dist.get_world_size(group)
        self._n = int(y.shape[0] if n_targets is None else n_targets)
        self._lo, self._hi = shard_bounds(self._n, self._world, dist.get_rank(group))
        if n_targets is None:
            y = y[self._lo : self._hi]
        elif y.shape[0] != self._hi - self._lo:
            raise ValueError(
                f"this rank holds rows {self._lo}..{self._hi} of {self._n}, got {y.shape[0]} rows"
            )
        self._local_y = np.ascontiguousarray(y, dtype=np.float32)
        h = np.zeros(self._n, np.float32) if heights is None else np.asarray(heights, np.float32)
        if h.shape != (self._n,):
            raise ValueError(f"heights must have shape ({self._n},), got {h.shape}")
        check_finite(h, "heights", "cell")
        self._heights = h.copy()
        self._local = CellIndex(self._local_y, h[self._lo : self._hi], backend=backend)
        self.backend = self._local.backend
        self.device = comm_device(group)
        self._norms = self._gather_norms()

    @property
    def n_targets(self) -> int:
        """Number of cells N (all shards)."""
        return self._n

    @property
    def dim(self) -> int:
        """Dimension d of queries."""
        return int(self._local_y.shape[1])

    @property
    def bounds(self) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of the targets this rank holds."""
        return self._lo, self._hi

    @property
    def local_targets(self) -> np.ndarray:
        """This rank's targets, shape ``(hi - lo, d)``, float32 (read-only view)."""
        view = self._local_y.view()
        view.flags.writeable = False
        return view

    @property
    def heights(self) -> np.ndarray:
        """All N heights, float32 (a copy)."""
        return self._heights.copy()

    def set_heights(self, heights: np.ndarray) -> None:
        """Refresh this rank's slice for new heights h (all N, shape ``(N,)``)."""
        h = np.asarray(heights, dtype=np.float32)
        if h.shape != (self.n_targets,):
            raise ValueError(f"heights must have shape ({self.n_targets},), got {h.shape}")
        check_finite(h, "heights", "cell")
        self._heights = h.copy()
        self._local.set_heights(h[self._lo : self._hi])

    def rows(self, cells: np.ndarray) -> np.ndarray:
        """Targets of the given cells (collective), shape ``(len(cells), d)``, float32."""
        cells = np.asarray(cells, dtype=np.int64)
        out = torch.zeros((cells.size, self.dim), dtype=torch.float32)
        mine = np.flatnonzero((cells >= self._lo) & (cells < self._hi))
        out[torch.from_numpy(mine)] = torch.from_numpy(self._local_y[cells[mine] - self._lo])
        out = out.to(self.device)
        dist.all_reduce(out, group=self._group)  # one owner per row, zeros elsewhere: exact
        return out.cpu().numpy()

    def squared_norms(self) -> np.ndarray:
        """|y_i|^2 of all N targets, shape ``(N,)``, float64 (gathered once, when built)."""
        return self._norms.copy()

    def _gather_norms(self) -> np.ndarray:
        out = torch.zeros(self._n, dtype=torch.float64)
        local = np.square(self._local_y, dtype=np.float64).sum(axis=1)
        out[self._lo : self._hi] = torch.from_numpy(local)
        out = out.to(self.device)
        dist.all_reduce(out, group=self._group)
        return out.cpu().numpy()

    def candidate_scores(
        self, x: np.ndarray, heights: np.ndarray, candidates: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`solver.cells.simd_index.candidate_scores` over all shards (collective).

        Each rank scores the candidates it holds (float64, as the one-process function does);
        an all-reduce takes the maximum, so every rank gets every candidate's exact score.
        """
        cand = np.asarray(candidates, dtype=np.int64)
        own = (cand >= self._lo) & (cand < self._hi)
        local = np.ascontiguousarray(np.where(own, cand - self._lo, 0), dtype=np.int32)
        h_local = np.asarray(heights, dtype=np.float64)[self._lo : self._hi]
        s = np.empty(cand.shape, dtype=np.float64)
        for j in range(cand.shape[1]):  # one column at a time: each candidate's own score
            s[:, j] = candidate_scores(x, self._local_y, h_local, local[:, j : j + 1], 1)[0][:, 0]
        s[~own] = -np.inf
        reduced = torch.from_numpy(s).to(self.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX, group=self._group)
        s = reduced.cpu().numpy()
        best = np.lexsort((cand, -s))[:, :k]
        return np.take_along_axis(s, best, axis=1), np.take_along_axis(cand, best, axis=1)

    @overload
    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def search(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def search(self, x: Array, k: int) -> tuple[Array, Array]:
        """Global top-k over all shards (collective); like :meth:`CellIndex.search`.

        Equal scores keep the lower cell first across shards too: each rank's list is in that
        order and the ranks hold ascending slices, so a stable sort of the gathered lists
        keeps it.
        """
        check_queries(x, k, self.n_targets, self.dim)
        xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
        xt = xt.to(self.device, torch.float32)
        local_k = min(k, self._hi - self._lo)
        scores, cells = self._local.search(xt, local_k)
        part_s = torch.full((xt.shape[0], k), float("-inf"), device=self.device)
        part_c = torch.zeros((xt.shape[0], k), dtype=torch.int64, device=self.device)
        part_s[:, :local_k] = scores.to(self.device)
        part_c[:, :local_k] = cells.to(self.device) + self._lo
        all_s = [torch.empty_like(part_s) for _ in range(self._world)]
        all_c = [torch.empty_like(part_c) for _ in range(self._world)]
        dist.all_gather(all_s, part_s, group=self._group)
        dist.all_gather(all_c, part_c, group=self._group)
        values, order = torch.sort(torch.cat(all_s, dim=1), dim=1, descending=True, stable=True)
        best_s, best_c = values[:, :k], torch.cat(all_c, dim=1).gather(1, order[:, :k])
        if isinstance(x, torch.Tensor):
            return best_s.to(x.device), best_c.to(x.device)
        return best_s.cpu().numpy(), best_c.cpu().numpy()
