"""Counts of top-2 cell pairs, merged as they stream in: memory bounded by the distinct pairs.

Every Monte Carlo pass with k >= 2 counts, per pair of adjacent cells {i, j}, the samples whose
two best cells are i and j, and of those the samples in the facet's slab (gap below the slab
width). :class:`PairTable` keeps them as sorted tables of pair codes ``min(i, j) N + max(i, j)``
and merges each batch's codes into them once the pending codes outnumber the table, so a pass
over any number of samples holds O(distinct pairs) codes, not O(samples). It runs on the host
(numpy arrays come in through zero-copy tensors) or on the search device.
"""

from __future__ import annotations

import numpy as np
import torch

# Pair chunks wait until they outnumber the merged table by this factor (and are at least
# 2^20 codes long) before a merge, so sorting costs amortised O(P log P) per sample batch.
_MERGE_FACTOR = 4
_MERGE_MIN = 1 << 20


class PairTable:
    """Counts of top-2 pairs {i, j} and of their slab samples, as sorted int64 code tables."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.n = n
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        self.codes, self.totals, self.slabs = empty, empty, empty
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending_len = 0

    def add_samples(self, first: torch.Tensor, second: torch.Tensor, in_slab: torch.Tensor) -> None:
        """Add one batch: top-1 and top-2 cells (shape ``(B,)``) and its slab mask."""
        codes = torch.minimum(first, second) * self.n + torch.maximum(first, second)
        self.add_counts(codes, torch.ones_like(codes), in_slab.to(torch.int64))

    def add_counts(self, codes: torch.Tensor, totals: torch.Tensor, slabs: torch.Tensor) -> None:
        """Add pre-counted codes (any order, repeats allowed)."""
        self._pending.append((codes, totals, slabs))
        self._pending_len += int(codes.numel())
        if self._pending_len > max(_MERGE_MIN, _MERGE_FACTOR * self.codes.numel()):
            self.compact()

    def compact(self) -> None:
        """Merge pending chunks into the sorted table."""
        if not self._pending:
            return
        codes = torch.cat([self.codes, *(p[0] for p in self._pending)])
        totals = torch.cat([self.totals, *(p[1] for p in self._pending)])
        slabs = torch.cat([self.slabs, *(p[2] for p in self._pending)])
        self._pending, self._pending_len = [], 0
        self.codes, inverse = torch.unique(codes, sorted=True, return_inverse=True)
        size = self.codes.numel()
        self.totals = totals.new_zeros(size).index_add_(0, inverse, totals)
        self.slabs = slabs.new_zeros(size).index_add_(0, inverse, slabs)

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pairs (P, 2), pair_counts (P,), slab_counts (P,))``, int64, pairs i < j sorted."""
        self.compact()
        codes = self.codes.cpu().numpy()
        pairs = np.stack([codes // self.n, codes % self.n], axis=1).astype(np.int64)
        return pairs, self.totals.cpu().numpy(), self.slabs.cpu().numpy()
