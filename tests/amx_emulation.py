"""A numpy model of the AMX screen's tile arithmetic (``amx_topk`` of ``solver/cells/_simd.c``).

Same arguments and outputs as the kernel's ``amx_topk``, from the same tile layout
(:func:`solver.cells.simd_index.amx_layout`): each query is rounded to bfloat16 (mode 3: its
head, tail and head again), every product of two bfloat16 values is exact in float32 and is
added to a float32 sum coordinate by coordinate, the float32 height is added, and each query
keeps its k best cells (equal scores: the lower cell first; padding cells score -inf). The
tile unit may order its float32 additions otherwise, so its scores may differ from these by
float32 accumulation rounding, never by the bfloat16 rounding that the certificate bounds.
It lets the AMX backend's certificate, fallback and layout run on every CPU.
"""

from __future__ import annotations

import numpy as np

from solver.cells.simd_index import bf16, from_bf16


def amx_topk_emulated(
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
    """Write the approximate top-k scores ``(m, k)`` float32 and cells ``(m, k)`` int64."""
    if mode not in (1, 3):
        raise ValueError("need mode 1 or 3")
    width = nk * cw
    expanded = np.zeros((m, width), dtype=np.uint16)
    head = bf16(x[:m])
    expanded[:, :d] = head
    if mode == 3:
        expanded[:, d : 2 * d] = bf16(x[:m] - from_bf16(head))
        expanded[:, 2 * d : 3 * d] = head
    a = from_bf16(expanded)
    blocks = ya.shape[0]
    # ya[b, j, r, l, p] = Y[16 b + l, cw j + 2 r + p]
    y = from_bf16(np.ascontiguousarray(ya.transpose(0, 3, 1, 2, 4)).reshape(blocks * 16, width))
    acc = np.zeros((m, blocks * 16), dtype=np.float32)
    for c in range(width):
        acc += np.outer(a[:, c], y[:, c])  # exact float32 products, rounded float32 sums
    s = acc + hb[None, :]
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :k]
    scores[:m] = np.take_along_axis(s, order, axis=1)
    cells[:m] = np.where(np.isfinite(scores[:m]), order, -1)
