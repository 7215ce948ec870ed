"""The estimator names, apart from the estimators (which load torch), for configs to check."""

from __future__ import annotations

from typing import Literal, get_args

EstimatorName = Literal["auto", "host", "fused", "distributed"]
ESTIMATOR_NAMES: tuple[str, ...] = get_args(EstimatorName)
