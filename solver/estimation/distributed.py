"""Monte Carlo measure estimates across ranks (GPUs and machines) with ``torch.distributed``.

Replicated targets (:func:`distributed_estimate` on a :class:`CellIndex` or backend): every rank
holds all N targets and answers the sample batches ``b`` with ``b % world_size == rank`` of the
one stream ``(seed, batch_size)``, so the ranks together see exactly the samples of the
single-process :func:`solver.estimation.host.estimate`, in the same batches. Counts, energy, cost
and mass sums are all-reduced; the sparse pair tables are all-gathered and merged. Integer
statistics equal the single-process estimate exactly; float sums agree to float64 rounding.
The data-driven slab width is the quantile of batch 0's gaps, computed on rank 0 and broadcast.

Sharded targets (:class:`ShardedIndex`): each rank holds the contiguous slice ``N/W`` of the
targets (keys on its GPU), every rank searches every batch against its slice, and the global
top-k is the best k of the ranks' gathered top-k lists (all-gather of ``M x k`` scores and cells
per batch). Statistics are then accumulated by batch owner as above. Use it when the keys of one
rank would not fit (or to split N-bound work); replicated mode moves less data otherwise.

The default process group must be initialised by the caller (``torchrun`` sets the
environment; see ``docs/gpu.md``): NCCL with one GPU per rank, or gloo on CPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from solver.estimation.fused import (
    Searcher,
    StatsAccumulator,
    search_device,
    slab_width,
)
from solver.estimation.host import DeadlineReached, MeasureEstimate, past
from solver.estimation.pairs import PairTable
from solver.estimation.sharded import ShardedIndex, comm_device, shard_bounds
from solver.estimation.spec import PassSpec

__all__ = ["ShardedIndex", "comm_device", "distributed_estimate", "shard_bounds"]


def distributed_estimate(
    index: Searcher, spec: PassSpec, *, group: dist.ProcessGroup | None = None
) -> MeasureEstimate:
    """:func:`solver.estimation.host.estimate` split over the ranks of ``group``, same on all.

    Args:
        index: this rank's index: a :class:`CellIndex` or backend over all targets
            (replicated mode), or a :class:`ShardedIndex` or a wrapper of one with
            ``sharded = True`` (sharded mode).
        spec: the pass, the same on every rank: ``n_samples`` in total over the ranks, one
            stream ``(seed, batch_size)``; a ``None`` slab width is the quantile of batch 0's
            gaps, and the ranks agree (all-reduce) on the deadline before each batch, so all
            stop at the same one.
        group: process group (default: the world).

    Returns:
        The estimate of all ``n_samples`` samples, identical on every rank.

    Raises:
        ValueError: no initialised process group, or the source's dim differs from the index's.
        DeadlineReached: the deadline passed before the last batch (on every rank).

    """
    if not dist.is_initialized():
        raise ValueError("distributed_estimate needs an initialised torch.distributed group")
    k = spec.k_for(index)
    n_samples, batch_size, gap_width = spec.n_samples, spec.batch_size, spec.gap_width
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    sharded = bool(getattr(index, "sharded", False))  # a ShardedIndex, or a wrapper of one
    comm = comm_device(group)
    acc = StatsAccumulator(index, comm, centres=spec.centres)
    search_on = comm if sharded else search_device(index)
    for b in range(-(-n_samples // batch_size)):
        if spec.deadline is not None and _any_rank(past(spec.deadline), comm, group):
            raise DeadlineReached(f"the deadline passed during a pass of {n_samples} samples")
        owner = b % world == rank
        if sharded or owner:  # a sharded search is collective: every rank joins every batch
            start = b * batch_size
            batch = spec.source.sample(min(batch_size, n_samples - start), spec.seed, start)
            x = torch.from_numpy(batch).to(search_on)
            scores, cells = index.search(x, k)
        if b == 0 and k >= 2 and gap_width is None:  # rank 0 owns batch 0
            gap_width = _broadcast_width(slab_width(scores) if rank == 0 else 0.0, comm, group)
        if owner:
            acc.add(x.to(comm), scores.to(comm), cells.to(comm), gap_width)
    return _reduce(acc, n_samples, gap_width, group, pairs=k >= 2)


def _any_rank(flag: bool, device: torch.device, group: dist.ProcessGroup | None) -> bool:
    """Whether ``flag`` holds on any rank of ``group`` (all-reduce, collective)."""
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def _broadcast_width(width: float, device: torch.device, group: dist.ProcessGroup | None) -> float:
    value = torch.tensor([width], dtype=torch.float64, device=device)
    world = group if group is not None else dist.group.WORLD
    if world is None:
        raise ValueError("the default process group is not initialised")
    dist.broadcast(value, src=dist.get_global_rank(world, 0), group=group)
    return float(value.item())


def _reduce(
    acc: StatsAccumulator,
    n_samples: int,
    gap_width: float | None,
    group: dist.ProcessGroup | None,
    *,
    pairs: bool,
) -> MeasureEstimate:
    """Sum the ranks' accumulators into ``acc`` (all-reduce and pair-table all-gather)."""
    dist.all_reduce(acc.counts, group=group)
    dist.all_reduce(acc.totals, group=group)
    if acc.sums is not None:
        dist.all_reduce(acc.sums, group=group)
    if pairs:
        acc.pairs = _gather_pairs(acc.pairs, acc.device, group)
        medians: list[list[float]] = [[] for _ in range(dist.get_world_size(group))]
        dist.all_gather_object(medians, acc.medians, group=group)
        acc.medians = [m for part in medians for m in part]
    return acc.result(n_samples, gap_width)


def _gather_pairs(
    table: PairTable, device: torch.device, group: dist.ProcessGroup | None
) -> PairTable:
    """All ranks' pair tables merged into one (all-gather of zero-padded (3, P) code tables)."""
    table.compact()
    local = torch.stack([table.codes, table.totals, table.slabs])  # (3, P) int64
    world = dist.get_world_size(group)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[1]], device=device), group=group)
    width = int(max(s.item() for s in sizes))
    padded = local.new_zeros((3, width))
    padded[:, : local.shape[1]] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    merged = PairTable(table.n, device)
    for part, size in zip(gathered, sizes, strict=True):
        used = int(size.item())
        merged.add_counts(part[0, :used], part[1, :used], part[2, :used])
    return merged
