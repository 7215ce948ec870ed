"""The fitted potential as one value: heights, the extended map on them, and their accuracy.

:meth:`Potential.build` turns fitted heights into everything a generator needs with one cell
index: an independent accuracy check (unless the caller already has one), one Monte Carlo pass
for adjacency, mass centres and the singular set, and the extended map T~ on that same index.
:meth:`Potential.save` / :meth:`Potential.load` write and read it (format:
:mod:`solver.potential.file_format`), atomically and verified.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from solver.cells.index import CellIndex
from solver.estimation.estimator import resolve_estimator
from solver.estimation.host import AccuracyReport, accuracy
from solver.estimation.spec import PassSpec
from solver.fitting.checkpoint import atomic_write_bytes
from solver.measures import SourceMeasure
from solver.potential import file_format
from solver.potential.extended_map import ExtendedMap, build_extended_map, check_blend_margin
from solver.potential.singular import FRAMES, AngleFrame, SingularSet
from solver.potential.threshold import (
    DEFAULT_BLEND_MARGIN,
    DEFAULT_RULE,
    ThresholdRule,
    rule_from_dict,
    rule_to_dict,
)
from solver.problem import OTProblem
from solver.seeding import derive_seed

# Seed keys of the potential's own sample streams: keys no fit method draws from (the fit uses
# 1-4), so an accuracy check here is independent of every sample that drove the fit.
CHECK_STREAM = 7_000_001
MAP_STREAM = 7_000_002


@dataclass(frozen=True, kw_only=True)
class PotentialConfig:
    """How :meth:`Potential.build` measures heights and builds the extended map.

    Attributes:
        samples_per_cell: Monte Carlo samples per cell of the pass that finds adjacency, mass
            centres and the singular set (about 64 per cell puts centres within a few per cent
            of a cell's width).
        check_samples_per_cell: samples per cell of the independent accuracy check (64 per
            cell: an L1 noise floor of about sqrt(2 / (64 pi)) = 0.1 for uniform weights).
        rule: how the singular threshold is chosen.
        frame: how the pair scores are measured (``"standard"``, ``"raw"``, ``"valley"`` or
            ``"diffusion"``); ``None``: for data-driven rules the diffusion frame (the
            valley frame for targets without cluster structure), the standard frame for a
            fixed threshold.
        k: cells per query of T~; ``None``: ``min(d + 1, N)``.
        power: Shepard power of T~'s blending weights; ``None``: ``max(1, d - 1)``.
        blend_margin: T~ blends a regular neighbour when its pair's score is at most this
            share of the singular threshold, in (0, 1] (docs/singular.md, the blend margin).

    """

    samples_per_cell: int = 64
    check_samples_per_cell: int = 64
    rule: ThresholdRule = DEFAULT_RULE
    frame: AngleFrame | None = None
    k: int | None = None
    power: float | None = None
    blend_margin: float = DEFAULT_BLEND_MARGIN

    def __post_init__(self) -> None:
        for name in ("samples_per_cell", "check_samples_per_cell"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frame is not None and self.frame not in FRAMES:
            raise ValueError(f"frame must be one of {list(FRAMES)} or None, got {self.frame!r}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1 or None, got {self.k}")
        if self.power is not None and not (self.power > 0 and math.isfinite(self.power)):
            raise ValueError(f"power must be finite and > 0 or None, got {self.power!r}")
        check_blend_margin(self.blend_margin)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the rule as :func:`solver.potential.threshold.rule_to_dict`)."""
        return {**asdict(self), "rule": rule_to_dict(self.rule)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PotentialConfig:
        """Rebuild from :meth:`to_dict` output; raises ``ValueError`` on unknown fields."""
        fields = dict(data)
        if "rule" in fields:
            fields["rule"] = rule_from_dict(fields["rule"])
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f"bad potential config fields {sorted(data)}: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class Potential:
    """A fitted potential ready to generate: build with :meth:`build`, or :meth:`load`.

    Attributes:
        extended_map: the pure map T and the extended map T~ on the heights; it holds the
            targets, the heights (each stored once), the adjacency and the singular set.
        inverse: for each of the caller's original target rows, the index of its merged
            target, shape ``(N_in,)``, int64 (``OTProblem.inverse``).
        accuracy: independent accuracy check of the heights (``None`` only for potentials
            read from version 1 files, whose check lived elsewhere).

    """

    extended_map: ExtendedMap
    inverse: np.ndarray = field(repr=False)
    accuracy: AccuracyReport | None

    @property
    def targets(self) -> np.ndarray:
        """y, shape ``(N, d)``, float32 (read-only)."""
        return self.extended_map.targets

    @property
    def heights(self) -> np.ndarray:
        """h, shape ``(N,)``, float64, in the targets' coordinates (a copy)."""
        return self.extended_map.heights

    @property
    def singular_set(self) -> SingularSet:
        """The classified adjacent pairs."""
        return self.extended_map.singular_set

    @property
    def source(self) -> SourceMeasure:
        """The source measure."""
        return self.extended_map.source

    def cell_labels(self, labels: np.ndarray) -> np.ndarray:
        """The majority label of each cell's training codes (ties: the smaller label).

        Args:
            labels: one non-negative integer label per original target row (the rows
                ``inverse`` maps to cells), shape ``(N_in,)``.

        Returns:
            Shape ``(N,)`` int64; ``-1`` for a cell that holds no training code.

        Raises:
            ValueError: labels of the wrong shape, or negative.

        """
        labels = np.asarray(labels)
        if labels.shape != self.inverse.shape:
            raise ValueError(f"labels {labels.shape} and inverse {self.inverse.shape} differ")
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
        n_classes = int(labels.max()) + 1 if labels.size else 1
        counts = np.zeros((self.extended_map.n_targets, n_classes), dtype=np.int64)
        np.add.at(counts, (self.inverse, labels.astype(np.int64)), 1)
        out = counts.argmax(axis=1).astype(np.int64)
        out[counts.sum(axis=1) == 0] = -1
        return out

    @classmethod
    def build(
        cls,
        problem: OTProblem,
        heights: np.ndarray,
        *,
        seed: int,
        config: PotentialConfig | None = None,
        accuracy: AccuracyReport | None = None,
        backend: str = "auto",
    ) -> Potential:
        """Measure the heights, find the singular set and build T~, on one cell index.

        Args:
            problem: the fitted problem (its merged targets, weights and source).
            heights: fitted h, shape ``(N,)``, in the caller's coordinates (``FitResult`` or
                ``FitProgress`` heights).
            seed: the fit's seed; the check and the map pass draw from streams of it that no
                fit draws from.
            config: sample sizes, threshold rule and map settings (defaults when ``None``).
            accuracy: an independent check already made at exactly these heights (the fit's
                own); measured with ``config.check_samples_per_cell`` per cell when ``None``.
            backend: cell index backend.

        Raises:
            ValueError: heights of the wrong shape or not finite; bad config.

        """
        config = config or PotentialConfig()
        h = _check_heights(heights, problem.n_targets)
        index = CellIndex(problem.targets, h, backend=backend)
        if accuracy is None:
            n = config.check_samples_per_cell * problem.n_targets
            accuracy = _measure(index, problem, n, derive_seed(seed, CHECK_STREAM))
        ext = build_extended_map(
            problem.targets,
            h,
            n_samples=config.samples_per_cell * problem.n_targets,
            seed=derive_seed(seed, MAP_STREAM),
            rule=config.rule,
            k=config.k,
            source=problem.source,
            power=config.power,
            blend_margin=config.blend_margin,
            frame=config.frame,
            index=index,
        )
        return cls(extended_map=ext, inverse=problem.inverse.copy(), accuracy=accuracy)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the potential to ``path`` atomically (temp file, fsync, rename)."""
        atomic_write_bytes(
            path, file_format.to_bytes(self.extended_map, self.inverse, self.accuracy)
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, backend: str = "auto") -> Potential:
        """Read a potential file, verifying it.

        Args:
            path: a file written by :meth:`save` (or a version 1 file of the service).
            backend: cell index backend of the map.

        Raises:
            PotentialFormatError: not a potential, unknown version, inconsistent or
                non-finite arrays. FileNotFoundError: no such file.

        """
        ext, inverse, acc = file_format.read(path, backend)
        return cls(extended_map=ext, inverse=inverse, accuracy=acc)

    @staticmethod
    def read_accuracy(path: str | os.PathLike[str]) -> AccuracyReport | None:
        """The accuracy stored in a potential file, without reading or verifying its arrays.

        Raises:
            PotentialFormatError: not a potential file. FileNotFoundError: no such file.

        """
        return file_format.read_accuracy(path)


def check_accuracy(
    problem: OTProblem,
    heights: np.ndarray,
    *,
    n_samples: int,
    seed: int,
    stream: int = 0,
    backend: str = "auto",
) -> AccuracyReport:
    """Accuracy of heights on fresh samples that no fit draws (an independent check).

    Args:
        problem: the fitted problem.
        heights: h, shape ``(N,)``, in the caller's coordinates.
        n_samples: Monte Carlo samples M (the noise floor of L1 is about sqrt(2N / (pi M))).
        seed: the fit's seed.
        stream: tells repeated checks of one fit apart (e.g. the iteration), so each draws
            new samples.
        backend: cell index backend.

    Raises:
        ValueError: heights of the wrong shape or not finite, ``n_samples < 1``.

    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    h = _check_heights(heights, problem.n_targets)
    index = CellIndex(problem.targets, h, backend=backend)
    return _measure(index, problem, n_samples, derive_seed(seed, CHECK_STREAM, stream))


def _measure(index: CellIndex, problem: OTProblem, n: int, seed: int) -> AccuracyReport:
    # This process's own estimator: a check is made by one process, never collectively.
    spec = PassSpec(source=problem.source, n_samples=n, seed=seed, k=1)
    est = resolve_estimator("auto", collective=False).estimate(index, spec)
    return accuracy(est.counts, n, problem.weights)


def _check_heights(heights: np.ndarray, n: int) -> np.ndarray:
    h = np.asarray(heights, dtype=np.float64)
    if h.shape != (n,) or not np.isfinite(h).all():
        raise ValueError(f"heights must be finite with shape ({n},), got shape {h.shape}")
    return h
