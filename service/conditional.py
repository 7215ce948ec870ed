"""Class-conditional generation: sample only the cells whose training codes carry one label.

Each cell W_i of the power diagram holds the training codes that map to target y_i; its class is
their majority label (:func:`service.serving.cell_labels`). For a class c let C be the union of
its cells. Since the fitted potential gives every cell its share v_i of the source measure mu,
mu(C) is the class's share of the training set, and

- a class-c sample draws z from mu conditioned on C, by rejection on the request's seeded source
  stream (keep the points whose top cell has class c, in stream order, until n are kept), so
  the answer is a pure function of (version, seed, label), like an unconditional sample;
- the pure map sends such z to T(z) = y_i, a class-c training code; the extended map blends y_i
  only with the neighbours T~ blends (regular, within the blend margin) that are also of
  class c (the weights of the others are dropped and the rest renormalised), so a class-c
  sample never mixes in another class's code even where the singular set missed a class
  boundary.

The expected number of draws is n / mu(C): about 10 n for a balanced ten-class dataset.
"""

from __future__ import annotations

import numpy as np

from service.errors import InvalidRequest
from service.serving import Served

# Source points drawn at most for one class-conditional request (rejection sampling): 4 M
# points in d = 64 is ~1 GB of float32 work over the request, a few seconds on one core.
MAX_DRAWS = 1 << 22
# Source points per rejection round: at least MIN_ROUND (keeps index calls large), at most
# MAX_ROUND (bounds memory to MAX_ROUND x d floats).
MIN_ROUND = 4096
MAX_ROUND = 65536


def class_mask(served: Served, label: int) -> np.ndarray:
    """Cells of class ``label``, shape ``(N,)`` bool.

    Raises:
        InvalidRequest: the bundle has no labels, or no cell has this label.

    """
    if served.cell_labels is None:
        raise InvalidRequest(f"model {served.name!r} has no labels: label= needs a labelled bundle")
    mask = served.cell_labels == label
    if not mask.any():
        raise InvalidRequest(
            f"label={label} owns no cell of model {served.name!r}; classes are {served.classes}"
        )
    return mask


def draw_in_class(served: Served, mask: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` source points whose top cell is in ``mask``, shape ``(n, d)`` float32.

    Rejection on the source stream ``seed``: points are kept in stream order, so the result is
    a pure function of ``(version, seed, mask)``.

    Raises:
        InvalidRequest: more than :data:`MAX_DRAWS` points would be needed.

    """
    source = served.ext_map.source
    share = float(mask.mean())
    kept: list[np.ndarray] = []
    n_kept, start = 0, 0
    while n_kept < n:
        wanted = max(MIN_ROUND, int(1.2 * (n - n_kept) / share) + 1)
        size = min(wanted, MAX_ROUND, MAX_DRAWS - start)
        if size <= 0:
            raise InvalidRequest(
                f"the class covers {share:.2%} of the cells: {n} samples need more than "
                f"{MAX_DRAWS} draws; ask for fewer"
            )
        z = source.sample(size, seed=seed, start=start)
        _, cells = served.ext_map.pure(z)
        hit = z[mask[cells]]
        kept.append(hit)
        n_kept += hit.shape[0]
        start += size
    return np.concatenate(kept)[:n].astype(np.float32)


def map_in_class(served: Served, z: np.ndarray, mask: np.ndarray, extended: bool) -> np.ndarray:
    """T(z), or T~(z) blended only with neighbours in ``mask``; shape ``(M, d)`` float32.

    Args:
        served: the model version.
        z: source points whose top cell is in ``mask``, shape ``(M, d)``.
        mask: the class's cells, shape ``(N,)`` bool.
        extended: blend (T~) or not (T).

    """
    if not extended:
        return served.ext_map.pure(z)[0]
    cells, weights = served.ext_map.blend_weights(z)
    weights = np.where(mask[cells], weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)  # the top cell is in the class: sum > 0
    targets = served.ext_map.targets[cells].astype(np.float64)
    return np.einsum("mk,mkd->md", weights, targets).astype(np.float32)


def sample_class(
    served: Served, label: int, n: int, seed: int, extended: bool, offset: int = 0
) -> np.ndarray:
    """``n`` class-``label`` latents, shape ``(n, d)`` float32 (see the module docstring).

    ``offset`` skips the class's first kept points, so pages concatenate like one answer (the
    skipped points are drawn again: a page costs its offset too, within :data:`MAX_DRAWS`).
    """
    mask = class_mask(served, label)
    z = draw_in_class(served, mask, offset + n, seed)[offset:]
    return map_in_class(served, z, mask, extended)


def class_endpoints(served: Served, label: int, seed: int) -> tuple[int, int]:
    """Two distinct cells of class ``label`` with mass centres, chosen by ``seed``.

    Raises:
        InvalidRequest: the class has fewer than two cells with a mass centre.

    """
    cells = np.flatnonzero(class_mask(served, label) & served.ext_map.has_centre)
    if cells.size < 2:
        raise InvalidRequest(f"label={label} has fewer than two cells to interpolate between")
    i, j = np.random.default_rng(seed).choice(cells, size=2, replace=False)
    return int(i), int(j)
