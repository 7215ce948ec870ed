"""Helpers shared by the benchmark scripts: machine description and JSON-line output."""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

import numpy as np
import torch

from solver import faiss_version


def machine_info() -> dict[str, Any]:
    """Where a figure was measured: CPU, cores, GPU and library versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info["faiss"] = faiss_version()
    return info


def emit(record: dict[str, Any]) -> None:
    """Print one JSON object per line, flushed so partial runs still leave results."""
    print(json.dumps(record, default=float), flush=True)


def clustered_latents(n: int, d: int, *, clusters: int = 10, seed: int = 0) -> np.ndarray:
    """Unit-scale latents in ``clusters`` Gaussian clusters (docs/benchmarks.md fit rows).

    Cluster centres are standard normal; members spread with std 0.3 around them.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
