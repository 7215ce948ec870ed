"""Types of the compiled CPU search kernel (solver/cells/_simd.c)."""

import numpy as np

def topk(
    x: np.ndarray,
    yb: np.ndarray,
    hb: np.ndarray,
    m: int,
    d: int,
    k: int,
    scores: np.ndarray,
    cells: np.ndarray,
    isa: str | None = None,
) -> None:
    """Exact top-k of <x, y_j> + h_j for m queries of dimension d, written into scores/cells."""

def isas() -> list[str]:
    """Code paths this CPU runs, best first."""

def rescore(
    x: np.ndarray,
    y: np.ndarray,
    h: np.ndarray,
    cand: np.ndarray,
    m: int,
    d: int,
    kc: int,
    k: int,
    scores: np.ndarray,
    cells: np.ndarray,
) -> None:
    """Float64 scores of each query's kc candidate cells; the best k, written into scores/cells."""

def amx_available() -> bool:
    """Whether amx_topk runs here (an AMX-BF16 CPU, a kernel that grants it, this build)."""

def amx_topk(
    x: np.ndarray,
    ya: np.ndarray,
    hb: np.ndarray,
    m: int,
    d: int,
    mode: int,
    nk: int,
    cw: int,
    k: int,
    scores: np.ndarray,
    cells: np.ndarray,
) -> None:
    """Approximate (bfloat16 tile) top-k of <x, y_j> + h_j, written into scores/cells."""
