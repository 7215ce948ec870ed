"""The AMX screen of the CPU index: its rounding bound, its certificate and its fallback.

These need a CPU with AMX-BF16 (and a kernel that grants it); elsewhere they skip, and the
``simd`` backend (tested in test_index.py) serves the CPU.
"""

import numpy as np
import pytest
from oracles import brute_force, separated

from solver import CellIndex, available_backends
from solver.cells.simd_index import amx_error_bound, amx_layout

pytestmark = pytest.mark.skipif(
    "amx" not in available_backends("cpu"), reason="needs a CPU with AMX-BF16"
)


def screen(x, y, h, mode, k):
    """The kernel's approximate top-k, straight from amx_topk."""
    _simd = pytest.importorskip("solver.cells._simd")

    ya, nk, cw = amx_layout(y, mode)
    hb = np.full(ya.shape[0] * 16, -np.inf, np.float32)
    hb[: len(h)] = h
    scores = np.empty((len(x), k), np.float32)
    cells = np.empty((len(x), k), np.int64)
    _simd.amx_topk(x, ya, hb, len(x), y.shape[1], mode, nk, cw, k, scores, cells)
    return scores, cells, nk * cw


@pytest.mark.parametrize("mode", [1, 3])
@pytest.mark.parametrize("shape", [(40, 3), (64, 16), (100, 33), (35, 70)])
def test_every_screened_score_is_within_the_rounding_bound(mode, shape, rng):
    """All N scores of each query (k = N), against float64, on ragged shapes and wide scales."""
    n, d = shape
    y = (rng.standard_normal((n, d)) * rng.choice([1e-3, 1.0, 50.0], size=(n, 1))).astype(
        np.float32
    )
    h = (rng.standard_normal(n) * 100.0).astype(np.float32)
    x = rng.random((300, d), dtype=np.float32)
    x[0], x[1] = 0.0, 1.0  # corners of the cube
    approx, cells, width = screen(x, y, h, mode, n)
    assert np.array_equal(np.sort(cells, axis=1), np.tile(np.arange(n), (len(x), 1)))
    exact = x.astype(np.float64) @ y.astype(np.float64).T + h
    err = np.abs(approx - np.take_along_axis(exact, cells, axis=1))
    y_norm = float(np.linalg.norm(y.astype(np.float64), axis=1).max())
    bound = amx_error_bound(x, y_norm, float(np.abs(h).max()), mode, width)
    assert (err <= bound[:, None]).all()
    assert (np.diff(approx, axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("mode", [1, 3])
def test_the_backend_is_exact_where_the_screen_runs(mode, rng):
    """Above the work threshold (N d >= 2^18) with several cell chunks and ragged M."""
    n, d = 9001, 32
    y = rng.standard_normal((n, d)).astype(np.float32)
    h = (-0.5 * np.square(y).sum(axis=1)).astype(np.float32)
    x = rng.random((1061, d), dtype=np.float32)
    index = CellIndex(y, h, backend="amx")
    index._impl.mode = mode
    top, ref_cells = brute_force(x, y, h, 6)
    for k in (1, 2, 5):
        scores, cells = index.search(x, k)
        ok = separated(top, k)
        assert ok.mean() > 0.95
        np.testing.assert_array_equal(cells[ok], ref_cells[ok, :k])
        np.testing.assert_allclose(scores, top[:, :k], rtol=1e-5, atol=1e-5)
    assert index._impl.screened == 3 * len(x)  # the screen ran, not the exact fallback alone


def test_crowded_cells_fall_back_to_the_exact_search_and_switch_precision(rng):
    """16 near copies of each target: mode 1 cannot certify, so queries go to the exact
    kernel (still the right cells), and the index then screens in mode 3."""
    base = rng.standard_normal((600, 32))
    y = (np.repeat(base, 16, axis=0) + 1e-3 * rng.standard_normal((9600, 32))).astype(np.float32)
    h = (-0.5 * np.square(y).sum(axis=1)).astype(np.float32)
    x = rng.random((17000, 32), dtype=np.float32)
    index = CellIndex(y, h, backend="amx")
    _, first = index.search(x, 1)
    assert index._impl.mode == 3  # most of the first batch stayed uncertified
    _, second = index.search(x, 1)
    assert index._impl.opened < 0.1 * index._impl.screened
    x, first, second = x[:2000], first[:2000], second[:2000]  # brute force on a share
    top, ref = brute_force(x, y, h, 2)
    ok = separated(top, 1)
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(first[ok], ref[ok, :1])
    np.testing.assert_array_equal(second[ok], ref[ok, :1])


def test_the_screen_refuses_bad_arguments():
    _simd = pytest.importorskip("solver.cells._simd")

    y = np.ones((40, 4), np.float32)
    ya, nk, cw = amx_layout(y, 1)
    hb = np.zeros(ya.shape[0] * 16, np.float32)
    x = np.zeros((10, 4), np.float32)
    scores, cells = np.empty((10, 2), np.float32), np.empty((10, 2), np.int64)
    with pytest.raises(ValueError, match="mode 1 or 3"):
        _simd.amx_topk(x, ya, hb, 10, 4, 2, nk, cw, 2, scores, cells)
    with pytest.raises(ValueError, match="mode 1 or 3"):  # odd block count
        _simd.amx_topk(x, ya, hb[:16], 10, 4, 1, nk, cw, 2, scores, cells)
    with pytest.raises(ValueError, match="ya has"):
        _simd.amx_topk(x, ya[:1], hb, 10, 4, 1, nk, cw, 2, scores, cells)
    with pytest.raises(ValueError, match="x has"):
        _simd.amx_topk(x, ya, hb, 11, 4, 1, nk, cw, 2, scores, cells)


def test_a_forked_child_screens_too(rng):
    """The AMX permission is granted per process at import; a forked child inherits it (a
    child without it would die on the first tile instruction)."""
    import multiprocessing as mp

    y = rng.standard_normal((9001, 32)).astype(np.float32)
    h = rng.standard_normal(9001).astype(np.float32)
    x = rng.random((3000, 32), dtype=np.float32)
    index = CellIndex(y, h, backend="amx")
    parent = index.assign(x)
    assert index._impl.screened == len(x)
    with mp.get_context("fork").Pool(1) as pool:
        child = pool.apply_async(index.assign, (x,)).get(timeout=60)
    np.testing.assert_array_equal(child, parent)
