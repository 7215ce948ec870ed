"""The AMX screen of the CPU index: its rounding bound, its certificate and its fallback.

The tile kernel needs a CPU with AMX-BF16 (and a kernel that grants it). A numpy model of its
arithmetic (``tests/amx_emulation.py``) runs the same checks on every CPU: the bound on every
screened score, and the backend's certificate and fallback with the model as its screen.
Where AMX exists the model is checked against the tiles, and the tiles run every check.
"""

import importlib

import numpy as np
import pytest
from amx_emulation import amx_topk_emulated
from oracles import brute_force, separated

from solver import CellIndex, available_backends
from solver.cells.simd_index import AmxBackend, amx_error_bound, amx_layout, kernel_available

HAS_AMX = "amx" in available_backends("cpu")
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="needs a CPU with AMX-BF16")
SCREENS = ["model", pytest.param("tiles", marks=needs_amx)]


def tile_kernel():
    return importlib.import_module("solver.cells._simd").amx_topk


def screen(x, y, h, mode, k, which="tiles"):
    """The approximate top-k, straight from amx_topk (the tiles) or from the model."""
    ya, nk, cw = amx_layout(y, mode)
    hb = np.full(ya.shape[0] * 16, -np.inf, np.float32)
    hb[: len(h)] = h
    scores = np.empty((len(x), k), np.float32)
    cells = np.empty((len(x), k), np.int64)
    topk = tile_kernel() if which == "tiles" else amx_topk_emulated
    topk(x, ya, hb, len(x), y.shape[1], mode, nk, cw, k, scores, cells)
    return scores, cells, nk * cw


def ragged(rng, n, d, m=300):
    """Targets of widely different scales, large heights, queries with the cube's corners."""
    y = (rng.standard_normal((n, d)) * rng.choice([1e-3, 1.0, 50.0], size=(n, 1))).astype(
        np.float32
    )
    h = (rng.standard_normal(n) * 100.0).astype(np.float32)
    x = rng.random((m, d), dtype=np.float32)
    x[0], x[1] = 0.0, 1.0  # corners of the cube
    return x, y, h


def backend(y, h, which):
    """The amx backend over y, h, screening with the tiles or with the model."""
    if which == "tiles":
        return CellIndex(y, h, backend="amx")._impl
    if not kernel_available():  # the exact fallback and the re-scoring are the kernel's
        pytest.skip("the amx backend's exact fallback needs the compiled kernel")
    return AmxBackend(y, h, screen=amx_topk_emulated)


@pytest.mark.parametrize("which", SCREENS)
@pytest.mark.parametrize("mode", [1, 3])
@pytest.mark.parametrize("shape", [(40, 3), (64, 16), (100, 33), (35, 70)])
def test_every_screened_score_is_within_the_rounding_bound(which, mode, shape, rng):
    """All N scores of each query (k = N), against float64, on ragged shapes and wide scales."""
    x, y, h = ragged(rng, *shape)
    n = shape[0]
    approx, cells, width = screen(x, y, h, mode, n, which)
    assert np.array_equal(np.sort(cells, axis=1), np.tile(np.arange(n), (len(x), 1)))
    exact = x.astype(np.float64) @ y.astype(np.float64).T + h
    err = np.abs(approx - np.take_along_axis(exact, cells, axis=1))
    y_norm = float(np.linalg.norm(y.astype(np.float64), axis=1).max())
    bound = amx_error_bound(x, y_norm, float(np.abs(h).max()), mode, width)
    assert (err <= bound[:, None]).all()
    assert (np.diff(approx, axis=1) <= 0).all()  # best first


@needs_amx
@pytest.mark.parametrize("mode", [1, 3])
@pytest.mark.parametrize("shape", [(40, 3), (64, 16), (100, 33), (35, 70), (3000, 32)])
def test_the_model_is_the_tiles_up_to_float32_sums(mode, shape, rng):
    """The same bfloat16 products: the model and the tiles differ only in the order of their
    float32 additions, by at most twice their accumulation bound, and keep the same cells
    wherever the tiles' scores are further apart than that."""
    x, y, h = ragged(rng, *shape)
    k = min(shape[0], 20)
    tiles, tile_cells, width = screen(x, y, h, mode, k, "tiles")
    model, model_cells, _ = screen(x, y, h, mode, k, "model")
    steps = (width + 1) * 2.0**-24
    scale = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1).max() + np.abs(h).max()
    slack = 2 * steps / (1 - steps) * 1.05 * scale
    assert (np.abs(tiles - model) <= slack[:, None]).all()
    apart = (np.abs(np.diff(tiles, axis=1)) > 2 * slack[:, None]).all(axis=1)
    assert apart.mean() > 0.5
    np.testing.assert_array_equal(tile_cells[apart], model_cells[apart])


@pytest.mark.parametrize("which", SCREENS)
@pytest.mark.parametrize("mode", [1, 3])
def test_the_backend_is_exact_where_the_screen_runs(which, mode, rng):
    """Above the work threshold (N d >= 2^18) with several cell chunks and ragged M."""
    n, d = 8209, 32
    y = rng.standard_normal((n, d)).astype(np.float32)
    h = (-0.5 * np.square(y).sum(axis=1)).astype(np.float32)
    x = rng.random((461 if which == "tiles" else 97, d), dtype=np.float32)  # the model is slow
    impl = backend(y, h, which)
    impl.mode = mode
    top, ref_cells = brute_force(x, y, h, 6)
    for k in (1, 2, 5):
        scores, cells = impl.search(x, k)
        ok = separated(top, k)
        assert ok.mean() > 0.95
        np.testing.assert_array_equal(cells[ok], ref_cells[ok, :k])
        np.testing.assert_allclose(scores, top[:, :k], rtol=1e-5, atol=1e-5)
    assert impl.screened == 3 * len(x)  # the screen ran, not the exact fallback alone


def test_uncertified_queries_go_to_the_exact_search(rng):
    """A screen that keeps too few cells certifies nothing: every query is searched exactly."""
    n, d = 8209, 32
    y = rng.standard_normal((n, d)).astype(np.float32)
    h = (-0.5 * np.square(y).sum(axis=1)).astype(np.float32)
    x = rng.random((200, d), dtype=np.float32)

    def blind(x, ya, hb, m, d, mode, nk, cw, k, scores, cells):
        """Kept cells whose scores sit far above every real one: no certificate can hold."""
        scores[:m] = 1e30
        cells[:m] = np.arange(k)

    if not kernel_available():
        pytest.skip("the amx backend's exact fallback needs the compiled kernel")
    impl = AmxBackend(y, h, screen=blind)
    scores, cells = impl.search(x, 2)
    top, ref = brute_force(x, y, h, 2)
    ok = separated(top, 2)
    np.testing.assert_array_equal(cells[ok], ref[ok])
    assert impl.opened == len(x)


@needs_amx
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


@needs_amx
def test_the_screen_refuses_bad_arguments():
    _simd = importlib.import_module("solver.cells._simd")

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


@needs_amx
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
