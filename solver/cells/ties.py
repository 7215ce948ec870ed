"""One rule for equal scores and bad queries, shared by every cell-search backend.

**Ties.** When two cells score exactly the same for a query (as the backend computes its
scores), the lower cell index wins: a top-k list is ordered by score descending, then by cell
index ascending, and of several cells tied at the k-th place the lowest indices are kept. A
backend whose own selection does not follow the rule searches one cell more than asked and
repairs only the rows with two equal scores among them (:func:`lowest_index_first`,
:func:`topk_lowest_index`), so the rule costs nothing on rows without a tie.

**Bad values.** A NaN or infinite query, target or height has no cell (its scores are NaN or
infinite, which backends would order arbitrarily); :func:`check_finite` refuses it with a
``ValueError`` naming its first bad row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def check_finite(values: Array, what: str, unit: str = "row") -> None:
    """Raise ``ValueError`` when ``values`` (numpy or torch, any device) hold NaN or inf.

    Args:
        values: shape ``(M, d)`` (rows judged whole) or ``(M,)``.
        what: the name of the values in the message (``"queries"``, ``"heights"``).
        unit: what one entry of the first axis is called in the message.

    """
    if isinstance(values, torch.Tensor):
        ok = torch.isfinite(values.detach())
        if ok.ndim == 2:
            ok = ok.all(dim=1)
        if bool(ok.all()):
            return
        bad = (~ok).cpu().numpy()
    else:
        finite = np.isfinite(values)
        if finite.all():
            return
        bad = np.logical_not(finite.all(axis=1) if finite.ndim == 2 else finite)
    first = int(np.argmax(bad))
    raise ValueError(
        f"{what} contain NaN or inf in {int(bad.sum())} {unit}s (first: {unit} {first})"
    )


def check_queries(x: Array, k: int, n: int, dim: int) -> None:
    """Refuse a search that has no answer (``ValueError``).

    k outside ``[1, n]``, queries x of a shape other than ``(M, dim)``, or a query with NaN or
    inf (the message names the first bad row).
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"queries must have shape (M, {dim}), got {tuple(x.shape)}")
    check_finite(x, "queries")


def lowest_index_first(
    scores: np.ndarray,
    cells: np.ndarray,
    k: int,
    deeper: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A backend's top-(k + 1) lists (numpy) cut to top-k lists that follow the tie rule.

    Rows without two equal scores among their k + 1 are taken as they are. Rows whose ties lie
    within the first k are re-ordered by (score descending, cell ascending). Rows tied across
    the k-th place may have dropped a lower tied cell: they are searched again (``deeper(rows,
    k2)`` with k2 doubling until the last score is below the k-th, or k2 = N), and that search
    replaces the row.

    Args:
        scores: shape ``(M, K)``, best first, ``K = min(k + 1, N)``.
        cells: shape ``(M, K)``, int64.
        k: cells per query to return, ``k <= K``.
        deeper: searches again the queries of the given rows for the given number of cells,
            with the same backend (its own scores).
        n: N, the number of cells.

    Returns:
        ``(scores, cells)``, shape ``(M, k)``.

    """
    tied = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(axis=1))
    if tied.size == 0:
        return scores[:, :k], cells[:, :k]
    scores, cells = scores.copy(), cells.copy()
    across = scores.shape[1] > k
    deep = tied[scores[tied, k - 1] == scores[tied, k]] if across else tied[:0]
    within = np.setdiff1d(tied, deep, assume_unique=True)
    if within.size:
        s, c = scores[within, :k], cells[within, :k]
        order = np.lexsort((c, -s))
        scores[within, :k] = np.take_along_axis(s, order, axis=1)
        cells[within, :k] = np.take_along_axis(c, order, axis=1)
    if deep.size:
        width = scores.shape[1]
        while True:
            width = min(n, 2 * width)
            s, c = (np.asarray(a) for a in deeper(deep, width))
            if width == n or bool((s[:, -1] < s[:, k - 1]).all()):
                break
        order = np.lexsort((c, -s))[:, :k]
        scores[deep, :k] = np.take_along_axis(s, order, axis=1)
        cells[deep, :k] = np.take_along_axis(c, order, axis=1)
    return scores[:, :k], cells[:, :k]


def lowest_index_first_tensors(
    scores: torch.Tensor,
    cells: torch.Tensor,
    k: int,
    deeper: Callable[[np.ndarray, int], tuple[torch.Tensor, torch.Tensor]],
    n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lowest_index_first` for tensors on any device: only rows with a tie visit the host.

    Rows without two equal scores (nearly all) are cut to k on their device; the tied rows are
    repaired by :func:`lowest_index_first` on the host and written back.

    Args:
        scores: shape ``(M, K)``, best first, ``K = min(k + 1, N)``, float32.
        cells: shape ``(M, K)``, int64, on the same device.
        k: cells per query to return, ``k <= K``.
        deeper: searches again the queries of the given rows (an int64 numpy array) for the
            given number of cells, with the same backend; tensors on any device.
        n: N, the number of cells.

    Returns:
        ``(scores, cells)``, shape ``(M, k)``, on the input's device.

    """
    tied = (scores[:, 1:] == scores[:, :-1]).any(dim=1).nonzero()[:, 0]
    if tied.numel() == 0:
        return scores[:, :k], cells[:, :k]
    rows = tied.cpu().numpy()

    def deeper_on_host(sub: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        s, c = deeper(rows[sub], width)
        return s.cpu().numpy(), c.cpu().numpy()

    s, c = lowest_index_first(
        scores[tied].cpu().numpy(), cells[tied].cpu().numpy(), k, deeper_on_host, n
    )
    out_s, out_c = scores[:, :k].clone(), cells[:, :k].clone()
    out_s[tied] = torch.from_numpy(np.ascontiguousarray(s)).to(scores.device)
    out_c[tied] = torch.from_numpy(np.ascontiguousarray(c)).to(cells.device)
    return out_s, out_c


def topk_lowest_index(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of a full score matrix ``block`` (shape ``(M, N)``) by the tie rule.

    ``max`` returns the first of equal maxima; ``topk`` orders equal values arbitrarily, so it
    takes k + 1 and only the rows with two equal values among them are sorted whole (stable,
    descending: equal scores keep the lower index first).

    Returns:
        ``(values, indices)``, shape ``(M, k)``, on ``block``'s device.

    """
    if k == 1:
        values, indices = block.max(dim=1, keepdim=True)
        return values, indices
    width = min(k + 1, block.shape[1])
    values, indices = block.topk(width, dim=1, sorted=True)
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1).nonzero()[:, 0]
    if tied.numel():
        v, i = torch.sort(block[tied], dim=1, descending=True, stable=True)
        values[tied], indices[tied] = v[:, :width], i[:, :width]
    return values[:, :k], indices[:, :k]
