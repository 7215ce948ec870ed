import os

import numpy as np
import pytest
import torch
from oracles import brute_force, dyadic_ties, ranked, unambiguous

from solver import BACKENDS, CellIndex, available_backends
from solver.cells.index import resolve_backend
from solver.cells.simd_index import simd_layout

CPU_BACKENDS = available_backends("cpu")


@pytest.fixture(params=[(50, 2), (300, 16), (257, 65)])
def problem(request, rng):
    n, d = request.param
    y = rng.standard_normal((n, d)).astype(np.float32)
    h = rng.standard_normal(n).astype(np.float32)
    x = (rng.random((2000, d)) - 0.5).astype(np.float32)
    return x, y, h


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_backends_match_brute_force_argmax(backend, k, problem):
    x, y, h = problem
    index = CellIndex(y, h, backend=backend)
    scores, cells = index.search(x, k)
    ref_scores, ref_cells = brute_force(x, y, h, k)
    ok = unambiguous(x, y, h, k)
    assert ok.mean() > 0.9
    np.testing.assert_array_equal(cells[ok], ref_cells[ok])
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert cells.dtype == np.int64 and scores.dtype == np.float32


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_refresh_heights_changes_cells_like_a_rebuild(backend, problem, rng):
    x, y, h = problem
    index = CellIndex(y, h, backend=backend)
    h2 = (h + rng.standard_normal(h.shape)).astype(np.float32)
    index.set_heights(h2)
    fresh = CellIndex(y, h2, backend=backend)
    np.testing.assert_array_equal(index.search(x, 3)[1], fresh.search(x, 3)[1])
    np.testing.assert_array_equal(index.heights, h2)
    np.testing.assert_array_equal(index.targets, y)  # targets untouched by the refresh


def test_all_backends_return_the_same_cells(problem):
    x, y, h = problem
    ok = unambiguous(x, y, h, 2)
    results = {b: CellIndex(y, h, backend=b).search(x, 2)[1] for b in available_backends()}
    first = next(iter(results.values()))
    for name, cells in results.items():
        np.testing.assert_array_equal(cells[ok], first[ok], err_msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_queries_give_tensors_on_their_device(backend, problem):
    x, y, h = problem
    index = CellIndex(y, h, backend=backend)
    scores, cells = index.search(torch.from_numpy(x), 2)
    assert isinstance(cells, torch.Tensor) and cells.device.type == "cpu"
    np.testing.assert_array_equal(cells.numpy(), index.search(x, 2)[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("duplicates", [False, True], ids=["equal-scores", "duplicate-targets"])
@pytest.mark.parametrize("shape", [(50, 3), (8192, 32)], ids=["small", "screened"])
def test_equal_scores_go_to_the_lower_cell_on_every_backend(backend, duplicates, shape, rng):
    """The tie rule, by exact equality with the oracle, on scores every backend computes
    exactly: ties inside the top k, across the k-th place, and among exact duplicates.

    8,192 x 32 is above the AMX screen's work threshold, so ``amx`` screens there.
    """
    n, d = shape
    x, y, h = dyadic_ties(rng, n, d, 400, duplicates=duplicates)
    index = CellIndex(y, h, backend=backend)
    for k in (1, 2, 5, n) if n <= 50 else (1, 2, 5):
        ref_scores, ref_cells = ranked(x, y, h, k)
        scores, cells = index.search(x, k)
        np.testing.assert_array_equal(cells, ref_cells, err_msg=f"k={k}")
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32), err_msg=f"k={k}")
        tensor_cells = index.search(torch.from_numpy(x), k)[1]
        np.testing.assert_array_equal(tensor_cells.numpy(), ref_cells, err_msg=f"k={k}")
    top = ranked(x, y, h, 6)[0]
    for k in (1, 2, 5):  # at least 8 of the 400 queries are tied across each k-th place
        assert (top[:, k - 1] == top[:, k]).sum() >= 8, k
    if backend == "amx" and n * d >= 1 << 18:
        assert index._impl.screened > 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_and_inf_are_refused_at_the_index(backend, rng):
    y = rng.standard_normal((40, 4)).astype(np.float32)
    index = CellIndex(y, backend=backend)
    x = rng.random((30, 4), dtype=np.float32) - 0.5
    for bad in (np.nan, np.inf, -np.inf):
        x_bad = x.copy()
        x_bad[17, 2] = bad
        x_bad[21, 0] = bad
        for queries in (x_bad, torch.from_numpy(x_bad)):
            with pytest.raises(
                ValueError, match=r"queries contain NaN or inf in 2 rows \(first: row 17\)"
            ):
                index.search(queries, 2)
        h = np.zeros(40)
        h[33] = bad
        with pytest.raises(
            ValueError, match=r"heights contain NaN or inf in 1 cells \(first: cell 33\)"
        ):
            index.set_heights(h)
        with pytest.raises(ValueError, match="heights contain NaN"):
            CellIndex(y, h, backend=backend)
        y_bad = y.copy()
        y_bad[5, 1] = bad
        with pytest.raises(
            ValueError, match=r"targets contain NaN or inf in 1 rows \(first: row 5\)"
        ):
            CellIndex(y_bad, backend=backend)
    np.testing.assert_array_equal(index.search(x, 2)[1], brute_force(x, y, np.zeros(40), 2)[1])


def test_bad_queries_and_heights_are_refused():
    index = CellIndex(np.eye(3), backend="torch")
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.zeros((1, 3), np.float32), 4)
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((1, 2), np.float32), 1)
    with pytest.raises(ValueError, match="heights"):
        index.set_heights(np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        index.set_heights(np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("no-such-backend")
    missing = [spec.name for spec in BACKENDS if spec.name not in available_backends()]
    for name in missing:  # known, but not usable on this host
        with pytest.raises(ValueError, match="not available"):
            resolve_backend(name)


@pytest.mark.gpu
def test_cuda_backends_agree_with_cpu(problem):
    x, y, h = problem
    ok = unambiguous(x, y, h, 2)
    cpu = CellIndex(y, h, backend="torch").search(x, 2)[1]
    for name in available_backends():
        cells = CellIndex(y, h, backend=name).search(torch.from_numpy(x).cuda(), 2)[1]
        assert cells.device.type == "cuda"
        np.testing.assert_array_equal(cells.cpu().numpy()[ok], cpu[ok], err_msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("duplicates", [False, True], ids=["equal-scores", "duplicate-targets"])
def test_cuda_tensors_follow_the_tie_rule_on_the_device(duplicates, rng):
    x, y, h = dyadic_ties(rng, 50, 3, 400, duplicates=duplicates)
    for name in available_backends("cuda"):
        index = CellIndex(y, h, backend=name)
        for k in (1, 2, 5):
            ref_scores, ref_cells = ranked(x, y, h, k)
            scores, cells = index.search(torch.from_numpy(x).cuda(), k)
            assert cells.device.type == "cuda" and scores.device.type == "cuda", name
            np.testing.assert_array_equal(cells.cpu().numpy(), ref_cells, err_msg=name)
            np.testing.assert_array_equal(
                scores.cpu().numpy(), ref_scores.astype(np.float32), err_msg=name
            )


@pytest.mark.parametrize("duplicates", [False, True], ids=["equal-scores", "duplicate-targets"])
def test_faiss_tensor_search_follows_the_tie_rule(duplicates, rng):
    """The faiss-gpu backend's path for CUDA tensors (FAISS writes the results through the
    tensors' addresses; only rows with a tie are repaired on the host), run on a CPU index:
    only the device is left out."""
    faiss = pytest.importorskip("faiss")
    from solver.cells.index import faiss_search_tensors, faiss_topk_tensors, tensor_queries

    x, y, h = dyadic_ties(rng, 50, 3, 400, duplicates=duplicates)
    index = faiss.IndexFlatIP(4)
    index.add(np.hstack([y, h[:, None]]))
    q = tensor_queries(torch.from_numpy(x), torch.device("cpu"))
    for k in (1, 2, 5, 50):
        ref_scores, ref_cells = ranked(x, y, h, k)
        scores, cells = faiss_topk_tensors(index, q, k, 50)
        assert isinstance(cells, torch.Tensor) and cells.dtype == torch.int64
        np.testing.assert_array_equal(cells.numpy(), ref_cells, err_msg=f"k={k}")
        np.testing.assert_array_equal(scores.numpy(), ref_scores.astype(np.float32))
    top = ranked(x, y, h, 3)[0]
    assert (top[:, 1] == top[:, 2]).sum() >= 8  # ties across the k-th place were repaired
    offset = q[7:]  # a view: FAISS reads from its first row, not its storage's
    np.testing.assert_array_equal(
        faiss_search_tensors(index, offset, 3)[1].numpy(), index.search(offset.numpy(), 3)[1]
    )
    for bad in (q.double(), q[:, :3], q.T.contiguous().T):
        with pytest.raises(ValueError, match="contiguous float32"):
            faiss_search_tensors(index, bad, 1)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "torch"])
def test_pooled_search_is_the_same_across_tasks_and_after_a_fork(backend, rng):
    """Queries split over the search pool match the torch backend; a forked child searches."""
    import multiprocessing as mp

    y = rng.standard_normal((300, 5)).astype(np.float32)
    h = rng.standard_normal(300).astype(np.float32)
    x = rng.random((20_000, 5), dtype=np.float32) - 0.5  # several pool tasks
    index, torch_index = CellIndex(y, h, backend=backend), CellIndex(y, h, backend="torch")
    s_f, c_f = index.search(x, 2)
    s_t, c_t = torch_index.search(x, 2)
    np.testing.assert_allclose(s_f, s_t, atol=1e-5)
    assert (c_f[:, 0] == c_t[:, 0]).mean() > 0.999  # float32 ties only
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(index.assign, (x[:5000],)).get(timeout=60)
    assert np.array_equal(child, c_f[:5000, 0])


def test_the_cpu_kernel_is_built_in_ci():
    """CI installs with a compiler: a missing kernel there is a build failure, not a skip."""
    if os.environ.get("CI") != "true":
        pytest.skip("outside CI a missing compiler only costs speed (FAISS serves the CPU)")
    cpu = available_backends("cpu")
    assert "simd" in cpu and cpu[0] in ("amx", "simd")


@pytest.mark.parametrize("shape", [(1, 3), (37, 1), (64, 5), (300, 16), (1000, 33), (1700, 40)])
def test_every_kernel_code_path_matches_brute_force(shape, rng):
    """Each instruction-set path this CPU runs, with ragged N (padding) and M (tail queries).

    Block counts are odd and even, within one cache chunk and across several (1,700 cells of
    dimension 40: chunks of 102 and 5 blocks).
    """
    simd = pytest.importorskip("solver.cells._simd")
    n, d = shape
    y = rng.standard_normal((n, d)).astype(np.float32)
    h = rng.standard_normal(n).astype(np.float32)
    x = (rng.random((1029, d)) - 0.5).astype(np.float32)  # 128 groups of 8, then 5
    yb, hb = simd_layout(y, h)
    for k in (1, 2, min(n + 2, 20)):
        ref_scores, ref_cells = brute_force(x, y, h, min(k, n))
        ok = unambiguous(x, y, h, min(k, n - 1)) if n > 1 else np.ones(len(x), bool)
        for isa in simd.isas():
            scores = np.empty((len(x), k), np.float32)
            cells = np.empty((len(x), k), np.int64)
            simd.topk(x, yb, hb, len(x), d, k, scores, cells, isa=isa)
            kk = min(k, n)
            np.testing.assert_array_equal(cells[ok, :kk], ref_cells[ok], err_msg=isa)
            np.testing.assert_allclose(scores[:, :kk], ref_scores, rtol=1e-5, atol=1e-5)
            # Fewer cells than k: the rest is marked as in FAISS (cell -1, score -inf).
            assert (cells[:, kk:] == -1).all() and np.isneginf(scores[:, kk:]).all()


def test_the_kernel_refuses_buffers_of_the_wrong_size():
    simd = pytest.importorskip("solver.cells._simd")
    yb, hb = simd_layout(np.ones((20, 4), np.float32), np.zeros(20, np.float32))
    x = np.zeros((10, 4), np.float32)
    scores, cells = np.empty((10, 2), np.float32), np.empty((10, 2), np.int64)
    with pytest.raises(ValueError, match="x has"):
        simd.topk(x, yb, hb, 11, 4, 2, scores, cells)
    with pytest.raises(ValueError, match="cells has"):
        simd.topk(x, yb, hb, 10, 4, 2, scores, cells[:5])
    with pytest.raises(ValueError, match="yb has"):
        simd.topk(x, yb[:1], hb, 10, 4, 2, scores, cells)
    with pytest.raises(ValueError, match="isa"):
        simd.topk(x, yb, hb, 10, 4, 2, scores, cells, isa="sse9")
    with pytest.raises(TypeError):  # read-only output
        ro = np.empty((10, 2), np.float32)
        ro.flags.writeable = False
        simd.topk(x, yb, hb, 10, 4, 2, ro, cells)


def test_candidate_scores_match_numpy_with_and_without_the_kernel(rng, monkeypatch):
    """The kernel's float64 re-scoring of per-query candidates equals the numpy fallback."""
    from solver.cells import simd_index

    y = rng.standard_normal((50, 7)).astype(np.float32)
    h = rng.standard_normal(50)
    x = (rng.random((300, 7)) - 0.5).astype(np.float32)
    cand = rng.integers(0, 50, size=(300, 5)).astype(np.int32)
    cand[:, 4] = cand[:, 0]  # a repeated candidate ties with itself: first position wins
    s_fast, c_fast = simd_index.candidate_scores(x, y, h, cand, 3)
    monkeypatch.setattr(simd_index, "_simd", None)
    s_ref, c_ref = simd_index.candidate_scores(x, y, h, cand, 3)
    np.testing.assert_allclose(s_fast, s_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(c_fast, c_ref)
    direct = x.astype(np.float64) @ y.astype(np.float64).T + h
    np.testing.assert_allclose(s_ref[:, 0], direct[np.arange(300)[:, None], cand].max(axis=1))
    monkeypatch.undo()
    if "simd" in available_backends("cpu"):  # the kernel checks its candidates
        with pytest.raises(ValueError, match="out of range"):
            simd_index.candidate_scores(x, y, h, np.full((300, 5), 50, np.int32), 2)
