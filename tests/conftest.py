"""Shared fixtures and the CUDA marker."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Run tests with one torch/OpenMP thread, as the service's worker and servers do.

    FAISS shares torch's OpenMP runtime. On the shared 2-core test machine a two-thread team
    spinning on busy cores made the 100-target grid fit take 24 s instead of 5.6 s (load 15);
    the tests' problems are too small to gain from a second thread.
    """
    torch.set_num_threads(1)


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
