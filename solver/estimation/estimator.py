"""One Monte Carlo estimator interface, three implementations, chosen once.

Every caller of a Monte Carlo pass (the fit's methods, the extended map, the service's checks)
holds an :class:`Estimator` and calls :meth:`Estimator.estimate`; none branches on the device.
:func:`resolve_estimator` picks the implementation once:

- ``"distributed"`` when ``torch.distributed`` is initialised with more than one rank
  (:func:`solver.estimation.distributed.distributed_estimate`: the ranks split the sample
  batches and all-reduce the statistics, so every rank gets the same estimate);
- ``"fused"`` when CUDA is present (:func:`solver.estimation.fused.fused_estimate`: statistics
  accumulated on the device that answers the queries);
- ``"host"`` otherwise (:func:`solver.estimation.host.estimate`).

All three return the same :class:`MeasureEstimate` for the same ``(seed, batch_size)`` stream:
integer statistics exactly, float sums to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
import torch.distributed as dist

from solver.estimation.distributed import comm_device, distributed_estimate
from solver.estimation.fused import Searcher, fused_estimate
from solver.estimation.host import MeasureEstimate, estimate
from solver.estimation.names import ESTIMATOR_NAMES
from solver.estimation.spec import PassSpec

T = TypeVar("T")


class Estimator(Protocol):
    """A Monte Carlo pass over the cells of an index, and agreement between its processes."""

    @property
    def name(self) -> str:
        """``"host"``, ``"fused"`` or ``"distributed"`` (reported in fit results)."""

    @property
    def lead(self) -> bool:
        """Whether this process does the side effects (files, logs): rank 0, or the only one."""

    def estimate(self, index: Searcher, spec: PassSpec) -> MeasureEstimate:
        """One pass over samples ``0 .. spec.n_samples - 1`` of the stream ``spec.seed``.

        Args:
            index: the cell index at the current heights.
            spec: the samples, statistics, batches and deadline of the pass.

        Returns:
            The estimate (host arrays), identical on every process of the estimator.

        Raises:
            DeadlineReached: the deadline passed before the last batch.

        """

    def agree(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a collective for many ranks).

        Decisions that depend on a clock (deadlines) go through it, so every rank of a
        distributed fit stops at the same step.
        """

    def broadcast(self, obj: T) -> T:
        """The lead's ``obj`` on every process (a collective for many ranks; picklable)."""

    def scatter(self, parts: list[T] | None) -> T:
        """Part r of the lead's list on rank r (a collective for many ranks; picklable).

        The lead passes one part per process; the others pass ``None``.
        """


@dataclass(frozen=True, kw_only=True)
class _SingleProcess:
    """What every one-process estimator shares: it leads, agrees with itself, keeps ``obj``."""

    lead: bool = True

    def agree(self, flag: bool) -> bool:
        """One process: the flag itself."""
        return flag

    def broadcast(self, obj: T) -> T:
        """One process: ``obj`` itself."""
        return obj

    def scatter(self, parts: list[T] | None) -> T:
        """One process: the only part."""
        if parts is None or len(parts) != 1:
            raise ValueError("one process scatters a list of exactly one part")
        return parts[0]


@dataclass(frozen=True, kw_only=True)
class HostEstimator(_SingleProcess):
    """The pass on the host (numpy statistics; the index may answer anywhere)."""

    name: str = "host"

    def estimate(self, index: Searcher, spec: PassSpec) -> MeasureEstimate:
        """See :meth:`Estimator.estimate`."""
        # the host estimate needs only the Searcher members
        return estimate(index, spec)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class FusedEstimator(_SingleProcess):
    """The pass with every per-sample statistic kept on the search device (a GPU).

    Attributes:
        device: where to accumulate; ``None`` for where the index answers.

    """

    name: str = "fused"
    device: str | None = None

    def estimate(self, index: Searcher, spec: PassSpec) -> MeasureEstimate:
        """See :meth:`Estimator.estimate`."""
        return fused_estimate(index, spec, device=self.device)


@dataclass(frozen=True, kw_only=True)
class DistributedEstimator:
    """The pass split over the ranks of the default ``torch.distributed`` group.

    Every rank must make the same calls in the same order (the fit does: its decisions depend
    only on the all-reduced estimates and on :meth:`agree`).
    """

    name: str = "distributed"

    @property
    def lead(self) -> bool:
        """Rank 0 does the side effects."""
        return dist.get_rank() == 0

    def estimate(self, index: Searcher, spec: PassSpec) -> MeasureEstimate:
        """See :meth:`Estimator.estimate` (collective)."""
        return distributed_estimate(index, spec)

    def agree(self, flag: bool) -> bool:
        """All-reduce (max) of the flag over the ranks (collective)."""
        value = torch.tensor([int(flag)], dtype=torch.int32, device=comm_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; collective)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def scatter(self, parts: list[T] | None) -> T:
        """Rank 0's ``parts[r]`` on rank r (pickled; collective)."""
        out: list[T | None] = [None]
        dist.scatter_object_list(out, parts if dist.get_rank() == 0 else None, src=0)
        return out[0]  # type: ignore[return-value]  # filled by the collective


def distributed_world() -> int:
    """Ranks of the initialised default ``torch.distributed`` group; 1 when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size())


def resolve_estimator(name: str = "auto", *, collective: bool = True) -> Estimator:
    """The estimator for ``name``; ``"auto"``: distributed, else fused on CUDA, else host.

    Args:
        name: one of :data:`ESTIMATOR_NAMES`.
        collective: whether ``"auto"`` may pick the distributed estimator. Passes that one
            process makes alone (a publication's map, a service check on rank 0) use
            ``collective=False``: a collective pass there would wait forever for the others.

    Raises:
        ValueError: an unknown name, or ``"distributed"`` without an initialised process group.

    """
    if name not in ESTIMATOR_NAMES:
        raise ValueError(f"estimator must be one of {ESTIMATOR_NAMES}, got {name!r}")
    world = distributed_world()
    if name == "auto":
        if world > 1 and collective:
            name = "distributed"
        else:
            name = "fused" if torch.cuda.is_available() else "host"
    if name == "distributed":
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("estimator 'distributed' needs an initialised torch.distributed group")
        return DistributedEstimator()
    if name == "fused":  # runs anywhere; on the CPU it only moves the sums into torch
        return FusedEstimator()
    return HostEstimator()
