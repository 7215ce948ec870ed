"""The semi-discrete OT problem: targets, their weights and the source measure, validated once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solver.measures import Domain, Sampler, SourceMeasure

# Weights are accepted as normalised when their sum is within this of 1 (float32 sums of 60k
# equal weights drift by ~1e-6; anything larger is a caller's mistake, not rounding).
WEIGHT_SUM_TOL = 1e-5


@dataclass(frozen=True, kw_only=True)
class OTProblem:
    """Transport the uniform source measure onto ``sum_i weights_i * delta(targets_i)``.

    Attributes:
        targets: distinct target points y_i, shape ``(N, d)``, float32.
        weights: target masses v_i, shape ``(N,)``, float64, positive, summing to 1.
        source: the source measure (dimension d).
        inverse: for each row of the caller's original targets, the index of its merged target,
            shape ``(N_original,)``, int64. Identity when there were no duplicates.
    """

    targets: np.ndarray
    weights: np.ndarray
    source: SourceMeasure
    inverse: np.ndarray

    @property
    def n_targets(self) -> int:
        """Number N of distinct targets."""
        return int(self.targets.shape[0])

    @property
    def dim(self) -> int:
        """Dimension d of the latent space."""
        return int(self.targets.shape[1])


def make_problem(
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    domain: Domain = "centered",
    sampler: Sampler = "sobol",
    source: SourceMeasure | None = None,
) -> OTProblem:
    """Validate targets and weights and build an :class:`OTProblem`.

    Duplicate targets (rows identical in float32, the precision the fit holds targets in) are
    merged into one target carrying their summed weight: their cells would otherwise be the
    same set, and the energy would have no unique minimiser.
    ``OTProblem.inverse`` maps the caller's rows to the merged ones.

    Args:
        targets: array of shape ``(N, d)``; finite values within float32's range.
        weights: array of shape ``(N,)``, positive, summing to 1; ``None`` for uniform ``1/N``.
        domain: cube of the source measure when ``source`` is not given.
        sampler: sampler of the source measure when ``source`` is not given.
        source: an explicit source measure; its dimension must equal d.

    Raises:
        ValueError: naming the bad value (empty, NaN/inf, beyond float32's range, wrong shape,
            bad weights, dimension mismatch).
    """
    y = np.asarray(targets)
    if y.ndim != 2:
        raise ValueError(f"targets must have shape (N, d), got shape {y.shape}")
    if y.shape[0] == 0 or y.shape[1] == 0:
        raise ValueError(f"targets must be non-empty, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"targets must be numeric, got dtype {y.dtype}")
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        raise ValueError(
            f"targets contain NaN or inf in {int(bad.sum())} rows "
            f"(first: row {int(np.argmax(bad))})"
        )
    # The fit holds targets in float32: duplicates are found in that precision (rows apart in
    # float64 but equal in float32 would be one cell twice), at half the memory of float64.
    with np.errstate(over="ignore"):
        y = np.ascontiguousarray(y, dtype=np.float32)
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        raise ValueError(
            f"targets exceed float32's range (magnitude above 3.4e38) in {int(bad.sum())} rows "
            f"(first: row {int(np.argmax(bad))})"
        )
    n, d = y.shape
    v = _validate_weights(weights, n)
    if source is None:
        source = SourceMeasure(dim=d, domain=domain, sampler=sampler)
    elif source.dim != d:
        raise ValueError(f"source measure has dim {source.dim} but targets have dim {d}")

    unique, first, inverse = np.unique(y, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if unique.shape[0] < n:
        order = np.argsort(first)  # keep the caller's order of first occurrences
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        merged = np.bincount(rank[inverse], weights=v, minlength=order.size)
        y, v, inverse = unique[order], merged, rank[inverse]
    else:
        inverse = np.arange(n)
    return OTProblem(
        targets=y,
        weights=v / v.sum(),
        source=source,
        inverse=inverse.astype(np.int64),
    )


def _validate_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    v = np.asarray(weights, dtype=np.float64)
    if v.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("weights contain NaN or inf")
    if (v <= 0).any():
        raise ValueError(
            f"weights must be > 0 (drop zero-weight targets), got min {float(v.min())!r}"
        )
    total = float(v.sum())
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"weights must sum to 1, got sum {total!r}")
    return v
