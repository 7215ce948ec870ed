"""Shared fixtures, the CUDA marker and, under CI=true, the guard on skipped tests."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from tests.ci_skips import (  # noqa: F401 - hooks: a skip under CI=true fails the run
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)


def pytest_configure(config: pytest.Config) -> None:
    """Run tests with one torch/OpenMP and one BLAS thread, as the service's worker and servers do.

    FAISS shares torch's OpenMP runtime. On the shared 2-core test machine a two-thread team
    spinning on busy cores made the 100-target grid fit take 24 s instead of 5.6 s (load 15);
    the tests' problems are too small to gain from a second thread. The OpenBLAS pools of
    numpy, scipy and FAISS are capped too (torch's count does not reach them): with both cores
    busy, tests/test_diffusion.py took 13.7 s on two BLAS threads and 0.9 s on one. The
    environment variable carries the cap to the processes the tests start.
    """
    torch.set_num_threads(1)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    threadpool_limits(limits=1, user_api="blas")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests cleanly when CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
