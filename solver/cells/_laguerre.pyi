"""Types of the compiled exact power cells (solver/cells/_laguerre.c)."""

import numpy as np

def cells(
    y: np.ndarray,
    h: np.ndarray,
    seeds: np.ndarray,
    indptr: np.ndarray,
    neighbours: np.ndarray,
    n: int,
    d: int,
    rings: int,
    low: float,
    high: float,
    threads: int,
    volumes: np.ndarray,
    centroids: np.ndarray,
) -> tuple[bytes, bytes, bytes, bool]:
    """Power cells in [low, high]^d (d = 2, 3) clipped by each cell's candidates.

    Volumes and centroids are written; returns (owners, neighbours, measures, duplicate), each
    facet once (owner < neighbour).
    """
