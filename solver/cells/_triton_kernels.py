"""Triton kernels of :mod:`solver.cells.triton_index` (imported only when triton is installed).

One kernel answers the top-k cells of a block of ``BLOCK_M`` queries:

1. stream the keys in ``BLOCK_N`` tiles: ``s = dot(x, y_tile^T) + h_tile`` on tensor cores
   (tf32 or bf16 inputs, fp32 accumulation; ieee fp32 in the forced-exact mode);
2. keep a running list of the ``KP`` best (approximate) scores and their cells per query in
   registers (of equal scores, the lower cells: tiles come in index order and the highest cell
   among the lowest scores is the one evicted); a tile only costs one compare and one
   reduction unless some query in the block has a score above its current ``KP``-th best, in
   which case a short ``while`` loop inserts them;
3. epilogue: re-score the ``KP`` candidates exactly in fp32 (gather ``y[cand]``, ``<x, y> + h``),
   write the best ``K`` in descending order (ties broken by lower cell index), and flag the
   queries whose candidate list cannot be certified to hold the exact top-k (see
   :mod:`solver.cells.triton_index` for the bound); the caller re-answers flagged queries exactly.

The ``M x N`` score matrix is never written. Heights stay fp32 and are added after the dot, so
only ``<x, y>`` sees the low precision.
"""

from __future__ import annotations

import triton
import triton.language as tl

MODE_FP32 = 0
MODE_TF32 = 1
MODE_BF16 = 2

# Relative error of one fp32 rounding (truncating adders included): 2^-23.
_FP32_U = tl.constexpr(1.1920928955078125e-07)


@triton.jit
def _merge_tile(s, vals, idxs, start, kcol, ncol):
    """Insert the scores of one tile ``s`` (BLOCK_M, BLOCK_N) into the running top-KP list."""
    thr = tl.min(vals, axis=1)
    s = tl.where(s > thr[:, None], s, float("-inf"))
    pending = tl.sum((s > thr[:, None]).to(tl.int32))
    while pending > 0:
        best = tl.max(s, axis=1)
        col = tl.argmax(s, axis=1)  # the first of equal scores: the lowest cell enters first
        # Evict the highest cell among the lowest scores, so of equal scores the lower cells
        # stay (the tie rule of solver.cells.ties); empty slots (-inf, cell 0) go first.
        slot = tl.argmax(tl.where(vals == thr[:, None], idxs, -1), axis=1)
        hit = (kcol[None, :] == slot[:, None]) & (best > thr)[:, None]
        vals = tl.where(hit, best[:, None], vals)
        idxs = tl.where(hit, (start + col)[:, None], idxs)
        s = tl.where(ncol[None, :] == col[:, None], float("-inf"), s)
        thr = tl.min(vals, axis=1)
        s = tl.where(s > thr[:, None], s, float("-inf"))
        pending = tl.sum((s > thr[:, None]).to(tl.int32))
    return vals, idxs


@triton.jit
def _kth_largest(vals, kcol, K: tl.constexpr):
    """Return the K-th largest entry of each row of ``vals`` (BLOCK_M, KP)."""
    for _ in tl.static_range(K - 1):
        slot = tl.argmax(vals, axis=1)
        vals = tl.where(kcol[None, :] == slot[:, None], float("-inf"), vals)
    return tl.max(vals, axis=1)


@triton.jit
def topk_kernel(
    x_ptr,
    keys_ptr,
    h_ptr,
    y_ptr,
    scores_ptr,
    cells_ptr,
    flags_ptr,
    M,
    N,
    D,
    stride_x,
    stride_keys,
    stride_y,
    ymax,
    emax,
    hmax,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KP: tl.constexpr,
    K: tl.constexpr,
    MODE: tl.constexpr,
    UPCAST: tl.constexpr,
    CERTIFY: tl.constexpr,
):
    """Top-K cells of queries ``x`` (M, D) among keys (N, BLOCK_D) plus heights ``h`` (N,).

    ``ymax`` = max_i |y_i|, ``emax`` = max_i |y_i - key_i| (key rounding), ``hmax`` = max |h_i|.
    ``UPCAST`` computes bf16 products in fp32 (the interpreter has no bf16 dot).
    """
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    kcol = tl.arange(0, KP)
    ncol = tl.arange(0, BLOCK_N)
    row_ok = rm < M
    x_mask = row_ok[:, None] & (rd[None, :] < D)
    x32 = tl.load(x_ptr + rm.to(tl.int64)[:, None] * stride_x + rd[None, :], mask=x_mask, other=0.0)

    # Query in the dot's precision, and the rounding terms of the certificate.
    if MODE == 2:
        xq = x32.to(tl.bfloat16)
        xr = xq.to(tl.float32)
        if UPCAST:
            xq = xr
        a = tl.sqrt(tl.sum((x32 - xr) * (x32 - xr), axis=1))
        b = tl.sqrt(tl.sum(xr * xr, axis=1))
    else:
        xq = x32
        b = tl.sqrt(tl.sum(x32 * x32, axis=1))
        a = b * 0.0009765625  # tf32 keeps 10 mantissa bits; truncation error < 2^-10
        b = b + a

    vals = tl.full((BLOCK_M, KP), float("-inf"), tl.float32)
    idxs = tl.zeros((BLOCK_M, KP), tl.int32)
    for start in range(0, N, BLOCK_N):
        rn = start + ncol
        col_ok = rn < N
        kt = tl.load(
            keys_ptr + rn.to(tl.int64)[None, :] * stride_keys + rd[:, None],
            mask=col_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            kt = kt.to(tl.float32)
        if MODE == 1:
            s = tl.dot(xq, kt, input_precision="tf32")
        elif MODE == 2:
            if UPCAST:
                s = tl.dot(xq, kt, input_precision="ieee")
            else:
                s = tl.dot(xq, kt)
        else:
            s = tl.dot(xq, kt, input_precision="ieee")
        hv = tl.load(h_ptr + rn, mask=col_ok, other=float("-inf"))
        s = s + hv[None, :]
        vals, idxs = _merge_tile(s, vals, idxs, start, kcol, ncol)

    flags = tl.zeros((BLOCK_M,), tl.int32)
    if CERTIFY:
        # |<x, y> - <x~, y~>| <= a |y| + b |y - y~| (Cauchy-Schwarz), plus fp32 accumulation of
        # BLOCK_D products and the rounding of "+ h".
        prod = b * (ymax + emax)
        eps = a * ymax + b * emax + (BLOCK_D + 1) * _FP32_U * prod + _FP32_U * hmax
        kth = _kth_largest(vals, kcol, K)
        vmin = tl.min(vals, axis=1)
        flags = ((vmin > float("-inf")) & (vmin >= kth - 2.0 * eps)).to(tl.int32)

    # Exact fp32 re-score of the candidates. The query is loaded again rather than kept live
    # through the key loop, which would hold BLOCK_M x BLOCK_D more registers there.
    x32 = tl.load(x_ptr + rm.to(tl.int64)[:, None] * stride_x + rd[None, :], mask=x_mask, other=0.0)
    exact = tl.full((BLOCK_M, KP), float("-inf"), tl.float32)
    for c in tl.static_range(KP):
        sel = kcol[None, :] == c
        cand = tl.sum(tl.where(sel, idxs, 0), axis=1)
        live = tl.max(tl.where(sel, vals, float("-inf")), axis=1) > float("-inf")
        yc = tl.load(
            y_ptr + cand.to(tl.int64)[:, None] * stride_y + rd[None, :],
            mask=x_mask & live[:, None],
            other=0.0,
        )
        hc = tl.load(h_ptr + cand, mask=row_ok & live, other=0.0)
        sc = tl.sum(x32 * yc, axis=1) + hc
        exact = tl.where(sel & live[:, None], sc[:, None], exact)

    out = rm.to(tl.int64) * K
    for j in tl.static_range(K):
        best = tl.max(exact, axis=1)
        tied = exact == best[:, None]
        cell = tl.min(tl.where(tied, idxs, 2147483647), axis=1)
        tl.store(scores_ptr + out + j, best, mask=row_ok)
        tl.store(cells_ptr + out + j, cell.to(tl.int64), mask=row_ok)
        exact = tl.where(tied & (idxs == cell[:, None]), float("-inf"), exact)
    tl.store(flags_ptr + rm, flags, mask=row_ok)
