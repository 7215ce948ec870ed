"""Counts of top-2 cell pairs, merged as they stream in: memory bounded by the distinct pairs.

Every Monte Carlo pass with k >= 2 counts, per pair of adjacent cells {i, j}, the samples whose
two best cells are i and j, and of those the samples in the facet's slab (gap below the slab
width). :class:`PairTable` keeps them as sorted tables of pair codes ``min(i, j) N + max(i, j)``
and merges each batch's codes into them once the pending codes outnumber the table, so a pass
over any number of samples holds O(distinct pairs) codes, not O(samples). A sample waits as one
int64 key ``2 code + in_slab`` (8 bytes, where a code with its two counts took 24): at N = 10,000,
d = 16 the merges of a 125 M-sample pass had lifted the fit's peak 0.9 GB above its resident
set. It runs on the host (numpy arrays come in through zero-copy tensors) or on the search
device.
"""

from __future__ import annotations

import numpy as np
import torch

# Pair chunks wait until they outnumber the merged table by this factor (and are at least
# 2^20 codes long) before a merge, so sorting costs amortised O(P log P) per sample batch.
# Measured on the host (P = 2.9 M distinct pairs of N = 10,000 cells, 20 M samples): peak
# memory above the start 0.92 GB with int64 code/total/slab chunks, a factor of 4 and
# torch.unique merges; 0.48 GB with 8-byte keys, an in-place sort and a sorted merge; 0.40 GB
# with a factor of 2 (17-19 s for the 20 M samples against 25 s, load 4-5).
_MERGE_FACTOR = 2
_MERGE_MIN = 1 << 20


class PairTable:
    """Counts of top-2 pairs {i, j} and of their slab samples, as sorted int64 code tables."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.n = n
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        self.codes, self.totals, self.slabs = empty, empty, empty
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._keys: list[torch.Tensor] = []
        self._pending_len = 0

    def add_samples(self, first: torch.Tensor, second: torch.Tensor, in_slab: torch.Tensor) -> None:
        """Add one batch: top-1 and top-2 cells (shape ``(B,)``) and its slab mask."""
        codes = torch.minimum(first, second) * self.n + torch.maximum(first, second)
        self._keys.append(2 * codes + in_slab.to(torch.int64))  # codes < N^2 <= 2^62
        self._grew(int(codes.numel()))

    def add_counts(self, codes: torch.Tensor, totals: torch.Tensor, slabs: torch.Tensor) -> None:
        """Add pre-counted codes (any order, repeats allowed)."""
        self._pending.append((codes, totals, slabs))
        self._grew(int(codes.numel()))

    def _grew(self, added: int) -> None:
        self._pending_len += added
        if self._pending_len > max(_MERGE_MIN, _MERGE_FACTOR * self.codes.numel()):
            self.compact()

    def compact(self) -> None:
        """Merge pending chunks into the sorted table."""
        if self._keys:  # count the samples' keys first: each distinct pair once in the merge
            counted = _count_keys(torch.cat(self._keys))
            self._keys = []
            if not self._pending and counted[0].device.type == "cpu":
                self.codes, self.totals, self.slabs = _merge_sorted(
                    (self.codes, self.totals, self.slabs), counted
                )
                self._pending_len = 0
                return
            self._pending.append(counted)
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


def _count_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct pair codes (sorted) of samples' keys ``2 code + in_slab``, and their counts.

    Returns ``(codes, totals, slabs)``. On the host the keys (consumed) are sorted in place and
    counted from the run boundaries: about one byte per key beyond the keys themselves, where
    ``torch.unique`` held several int64 copies of them.
    """
    if keys.device.type != "cpu":
        distinct, counts = torch.unique(keys, sorted=True, return_counts=True)
        codes, inverse = torch.unique(distinct >> 1, sorted=True, return_inverse=True)
        totals = counts.new_zeros(codes.numel()).index_add_(0, inverse, counts)
        slabs = counts.new_zeros(codes.numel()).index_add_(0, inverse, counts * (distinct & 1))
        return codes, totals, slabs
    k = keys.numpy()
    if k.size == 0:
        return keys, keys.clone(), keys.clone()
    k.sort()
    runs = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    counts = np.diff(runs, append=k.size).astype(np.int64)
    distinct = k[runs]
    codes = distinct >> 1
    first = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    totals = np.add.reduceat(counts, first)
    slabs = np.add.reduceat(counts * (distinct & 1), first)
    return torch.from_numpy(codes[first]), torch.from_numpy(totals), torch.from_numpy(slabs)


def _merge_sorted(
    table: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two host tables of sorted distinct codes with counts, merged into new arrays."""
    tc, tt, ts = (t.numpy() for t in table)
    nc, nt, ns = (t.numpy() for t in new)
    pos = np.searchsorted(tc, nc)
    found = pos < tc.size
    found[found] = tc[pos[found]] == nc[found]
    gone = ~found
    codes = np.insert(tc, pos[gone], nc[gone])
    totals = np.insert(tt, pos[gone], nt[gone])
    slabs = np.insert(ts, pos[gone], ns[gone])
    at = np.searchsorted(codes, nc[found])
    totals[at] += nt[found]
    slabs[at] += ns[found]
    return torch.from_numpy(codes), torch.from_numpy(totals), torch.from_numpy(slabs)
