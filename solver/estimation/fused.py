"""Monte Carlo statistics accumulated on the search device (the GPU path of ``estimate``).

:func:`fused_estimate` makes the same pass as :func:`solver.estimation.host.estimate` (same sample
batches, same top-k queries, same slab rule) but keeps every per-sample result on the device
that answered the query: counts by ``bincount``, mass-centre sums by ``index_add_`` in float64,
energy and transport cost as float64 device scalars, and top-2 pair statistics as a sorted table
of pair codes ``min(i, j) * N + max(i, j)`` merged with ``unique``. Only the samples travel to the
device (they are drawn on the host: the Sobol stream is a CPU generator) and only the final
N-sized results come back.

Integer statistics (counts, pairs, pair and slab counts) equal the host estimate exactly; float
sums agree to float64 rounding (the summation order differs). :class:`StatsAccumulator` is shared
with :mod:`solver.estimation.distributed`, whose ranks each accumulate part of the stream.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from solver.cells.index import CellIndex, backend_spec
from solver.estimation.host import (
    DEFAULT_SLAB_FRACTION,
    DeadlineReached,
    MeasureEstimate,
    past,
)
from solver.estimation.pairs import PairTable
from solver.estimation.spec import PassSpec

Array = np.ndarray | torch.Tensor


class Searcher(Protocol):
    """What the estimate needs from an index: :class:`CellIndex` or a bare backend.

    The transport cost also reads ``targets`` (y, shape ``(N, d)``, float32) or, from an index
    with ``sharded = True``, ``squared_norms()`` and ``heights`` (see :class:`StatsAccumulator`).
    """

    @property
    def n_targets(self) -> int:
        """N."""

    @property
    def dim(self) -> int:
        """D."""

    def search(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k scores and cells, tensors on x's device."""


def search_device(searcher: Searcher) -> torch.device:
    """Where a searcher answers: its own device, the CPU for host backends, else CUDA."""
    own = getattr(searcher, "device", None)
    if isinstance(own, torch.device):
        return own
    if isinstance(searcher, CellIndex) and backend_spec(searcher.backend).device == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class StatsAccumulator:
    """Running sums of one Monte Carlo pass, held on ``device``.

    Args:
        searcher: the index the pass searches. The transport cost needs each sample's target:
            taken from ``searcher.targets`` (float32, copied to the device), or, for a sharded
            index (no rank holds every target), as |x|^2 - 2 (s - h) + |y|^2 from the score s,
            the height and the squared norm of the sample's cell.
        device: where the sums live (the device the searcher answers on).
        centres: also keep per-cell coordinate sums, shape ``(N, d)``, float64.

    """

    def __init__(self, searcher: Searcher, device: torch.device, *, centres: bool) -> None:
        n, d = searcher.n_targets, searcher.dim
        self.device = device
        self._y: torch.Tensor | None = None
        if getattr(searcher, "sharded", False):
            norms, heights = searcher.squared_norms(), searcher.heights  # type: ignore[attr-defined]
            self._norms = torch.from_numpy(norms).to(device)
            self._h = torch.from_numpy(np.asarray(heights, dtype=np.float64)).to(device)
        else:
            y = searcher.targets  # type: ignore[attr-defined]
            self._y = torch.from_numpy(np.array(y, dtype=np.float32)).to(device)
        self.counts = torch.zeros(n, dtype=torch.int64, device=device)
        # energy and transport-cost sums share one float64 tensor so ranks reduce them together.
        self.totals = torch.zeros(2, dtype=torch.float64, device=device)
        self.sums = torch.zeros((n, d), dtype=torch.float64, device=device) if centres else None
        self.pairs = PairTable(n, device)
        # Per-batch median top-2 gaps (host floats, one per batch); their median is the
        # estimate's median_gap, as in the host estimate.
        self.medians: list[float] = []

    def add(
        self, x: torch.Tensor, scores: torch.Tensor, cells: torch.Tensor, gap_width: float | None
    ) -> None:
        """Add a batch: samples ``x`` (B, d) float32 and their top-k ``scores``/``cells`` (B, k).

        ``gap_width`` is required when k >= 2 (slab statistics), ignored for k = 1.
        """
        top = cells[:, 0]
        self.counts += torch.bincount(top, minlength=self.counts.numel())
        self.totals[0] += scores[:, 0].to(torch.float64).sum()
        if self._y is not None:
            # Same arithmetic as the host estimate: the difference in fp32, squared in float64.
            self.totals[1] += 0.5 * (x - self._y[top]).to(torch.float64).square().sum()
        else:
            x64 = x.to(torch.float64)
            inner = scores[:, 0].to(torch.float64) - self._h[top]
            sq = x64.square().sum(dim=1) - 2.0 * inner + self._norms[top]
            self.totals[1] += 0.5 * sq.sum()
        if self.sums is not None:
            self.sums.index_add_(0, top, x.to(torch.float64))
        if cells.shape[1] >= 2:
            if gap_width is None:
                raise ValueError("gap_width is required for top-2 statistics (k >= 2)")
            gaps = scores[:, 0] - scores[:, 1]
            self.medians.append(float(torch.quantile(gaps.to(torch.float64), 0.5)))
            self.pairs.add_samples(top, cells[:, 1], gaps < gap_width)

    def result(self, n_samples: int, gap_width: float | None) -> MeasureEstimate:
        """Return the estimate of ``n_samples`` samples (host arrays)."""
        pairs, pair_counts, slab_counts = self.pairs.to_numpy()
        energy, cost = self.totals.cpu().numpy().tolist()
        return MeasureEstimate(
            n_samples=n_samples,
            counts=self.counts.cpu().numpy(),
            energy=energy / n_samples,
            transport_cost=cost / n_samples,
            pairs=pairs,
            pair_counts=pair_counts,
            slab_counts=slab_counts,
            gap_width=float(gap_width or 0.0),
            median_gap=float(np.median(self.medians)) if self.medians else 0.0,
            mass_sums=None if self.sums is None else self.sums.cpu().numpy(),
        )


def slab_width(scores: torch.Tensor) -> float:
    """Return the host estimate's data-driven slab width: a quantile of a batch's top-2 gaps."""
    gaps = (scores[:, 0] - scores[:, 1]).cpu().numpy()
    return float(np.quantile(gaps, DEFAULT_SLAB_FRACTION))


def fused_estimate(
    searcher: Searcher, spec: PassSpec, *, device: str | torch.device | None = None
) -> MeasureEstimate:
    """:func:`solver.estimation.host.estimate` with every per-sample result kept on the device.

    Args:
        searcher: a :class:`CellIndex` or a backend with ``targets`` (e.g.
            :class:`solver.cells.triton_index.TritonBackend`), at the current heights.
        spec: the samples, statistics, batches and deadline of the pass (the batches, hence
            the data-driven slab width, are those of the host estimate).
        device: where to accumulate; by default where the searcher answers.

    Returns:
        The same :class:`MeasureEstimate` as the host estimate (see module docstring).

    Raises:
        ValueError: the source's dim differs from the searcher's.
        DeadlineReached: the deadline passed before the last batch.

    """
    k = spec.k_for(searcher)
    gap_width = spec.gap_width
    dev = torch.device(device) if device is not None else search_device(searcher)
    acc = StatsAccumulator(searcher, dev, centres=spec.centres)
    for batch in spec.source.batches(spec.n_samples, spec.seed, spec.batch_size):
        if past(spec.deadline):
            raise DeadlineReached(f"the deadline passed during a pass of {spec.n_samples} samples")
        x = torch.from_numpy(batch).to(dev)
        scores, cells = searcher.search(x, k)
        if k >= 2 and gap_width is None:
            gap_width = slab_width(scores)
        acc.add(x, scores, cells, gap_width)
    return acc.result(spec.n_samples, gap_width)
