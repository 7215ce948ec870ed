"""What one Monte Carlo pass measures: the sample stream, the statistics, the batches, the deadline.

Every estimator (host, fused, distributed; :mod:`solver.estimation.estimator`) takes one
:class:`PassSpec` beside the index it searches, so the pass's settings are spelled once;
:func:`dataclasses.replace` varies one of them (the fit's stages change the seed, the sample
count and the slab width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from solver.measures import DEFAULT_BATCH, SourceMeasure


class _Sized(Protocol):
    @property
    def n_targets(self) -> int: ...

    @property
    def dim(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class PassSpec:
    """One Monte Carlo pass over samples ``0 .. n_samples - 1`` of the source stream ``seed``.

    Attributes:
        source: the source measure (its dim must equal the index's).
        n_samples: M >= 1 (in total over the ranks of a distributed pass).
        seed: sample stream seed (the same on every rank).
        k: 1 for cell measures only; 2 adds adjacency and slab statistics (clipped to N).
        gap_width: slab half-width delta in score units; ``None`` picks the quantile of the
            first batch's top-2 gaps that puts ``DEFAULT_SLAB_FRACTION`` of the samples in slabs
            (:mod:`solver.estimation.host`).
        centres: also accumulate per-cell coordinate sums (for mass centres).
        batch_size: samples per batch; memory is O(batch_size (d + k) + N d + distinct pairs)
            whatever M. The batches, hence a data-driven slab width, are the same for every
            estimator.
        deadline: ``time.perf_counter`` value after which the pass stops between batches
            (raising ``DeadlineReached``; every rank of a distributed pass stops at the same
            batch); ``None`` for none.

    Raises:
        ValueError: ``n_samples``, ``k`` or ``batch_size`` below 1.

    Example:
        >>> PassSpec(source=SourceMeasure(dim=2), n_samples=1000, seed=0, k=1).batch_size
        65536

    """

    source: SourceMeasure
    n_samples: int
    seed: int
    k: int = 2
    gap_width: float | None = None
    centres: bool = False
    batch_size: int = DEFAULT_BATCH
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("n_samples", "k", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def k_for(self, index: _Sized) -> int:
        """Return k clipped to the index's N, once the source's dim is checked against it.

        Raises:
            ValueError: the source and the index differ in dimension.

        """
        if self.source.dim != index.dim:
            raise ValueError(f"source dim {self.source.dim} != index dim {index.dim}")
        return min(self.k, index.n_targets)
