"""The fused Triton backend (interpreter on the CPU, compiled on CUDA) and device statistics."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import fused_worker as worker
import numpy as np
import pytest
import torch
from oracles import brute_force, ranked, unambiguous

from solver import CellIndex, PassSpec, SourceMeasure, available_backends, estimate
from solver.estimation.fused import fused_estimate

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason="triton is not installed (pip install triton; 'gpu' extra)"
)


# --- the kernel under the interpreter (its own process: TRITON_INTERPRET is process-wide) ---


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    out = tmp_path_factory.mktemp("interpreted")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fused_worker.py"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return out


def _case(out, name):
    return dict(np.load(out / f"{name}.npz"))


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("name", list(worker.SEARCH_CASES))
def test_interpreted_kernel_matches_brute_force(interpreted, name):
    c = _case(interpreted, name)
    x, y, h, k = c["x"], c["y"], c["h"], int(c["k"])
    ref_scores, ref_cells = brute_force(x, y, h, k)
    ok = unambiguous(x, y, h, k)
    assert ok.mean() > 0.9
    np.testing.assert_array_equal(c["cells"][ok], ref_cells[ok])
    np.testing.assert_allclose(c["scores"], ref_scores, rtol=1e-5, atol=1e-5)
    assert c["cells"].dtype == np.int64 and c["scores"].dtype == np.float32
    assert c["cells"].shape == (worker.M, k)


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("name", [*worker.TIE_CASES, "ties-evict-fp32"])
def test_interpreted_kernel_gives_equal_scores_to_the_lower_cell(interpreted, name):
    """The tie rule (exact equality with the oracle) on scores every precision computes exactly."""
    c = _case(interpreted, name)
    x, y, h, k = c["x"], c["y"], c["h"], int(c["k"])
    ref_scores, ref_cells = ranked(x, y, h, k)
    np.testing.assert_array_equal(c["cells"], ref_cells)
    np.testing.assert_array_equal(c["scores"], ref_scores.astype(np.float32))
    top = ranked(x, y, h, k + 1)[0]
    assert (top[:, k - 1] == top[:, k]).sum() >= 3  # tied across the k-th place


@pytest.mark.slow
@needs_triton
def test_uncertified_candidates_fall_back_to_exact(interpreted):
    # margin 0 (KP = k = 2) can never certify; the clustered targets defeat bf16 candidates.
    for name in ("d17-k2-bf16-margin0", "clustered"):
        c = _case(interpreted, name)
        ref_scores, ref_cells = brute_force(c["x"], c["y"], c["h"], 2)
        ok = unambiguous(c["x"], c["y"], c["h"], 2)
        assert int(c["fallbacks"]) > 0, name
        np.testing.assert_array_equal(c["cells"][ok], ref_cells[ok], err_msg=name)
        np.testing.assert_allclose(c["scores"], ref_scores, rtol=1e-5, atol=1e-5)
    assert int(_case(interpreted, "d17-k2-bf16-margin0")["fallbacks"]) == worker.M


@pytest.mark.slow
@needs_triton
def test_interpreted_refresh_and_tensor_results(interpreted):
    c = _case(interpreted, "refresh")
    np.testing.assert_array_equal(c["refreshed"], c["fresh"])
    np.testing.assert_array_equal(c["tensor_cells"], c["refreshed"])
    assert list(c["tensor_types"]) == ["torch.float32", "torch.int64", "cpu"]


@pytest.mark.slow
@needs_triton
def test_interpreted_fused_estimate_matches_the_host_estimate(interpreted):
    c = _case(interpreted, "estimate")
    ref = estimate(
        CellIndex(c["y"], c["h"], backend="torch"),
        PassSpec(
            source=SourceMeasure(dim=3),
            n_samples=1024,
            seed=11,
            k=2,
            gap_width=0.02,
            centres=True,
            batch_size=512,
        ),
    )
    np.testing.assert_array_equal(c["counts"], ref.counts)
    np.testing.assert_array_equal(c["pairs"], ref.pairs)
    np.testing.assert_array_equal(c["pair_counts"], ref.pair_counts)
    np.testing.assert_array_equal(c["slab_counts"], ref.slab_counts)
    np.testing.assert_allclose(float(c["energy"]), ref.energy, rtol=1e-6)
    np.testing.assert_allclose(c["mass_sums"], ref.mass_sums, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@needs_triton
def test_interpreted_backend_refuses_bad_arguments(interpreted):
    errors = json.loads((interpreted / "errors.json").read_text())
    expected = {
        "k": "k must be in",
        "shape": "queries must have shape",
        "precision": "fp16",
        "margin": "margin",
        "dim": "d <= 256",
        "heights": "NaN",
        "queries": "queries contain NaN or inf",
    }
    for name, fragment in expected.items():
        assert errors[name] is not None and fragment in errors[name], (name, errors[name])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_backend_is_unavailable_without_cuda_or_interpreter():
    from solver.cells import triton_index as fused

    assert not fused.available()
    assert "triton" not in available_backends()
    with pytest.raises(ValueError, match="needs triton"):
        fused.TritonBackend(np.eye(2, dtype=np.float32), np.zeros(2, np.float32))


# --- compiled kernel on CUDA ---


@pytest.fixture
def cuda_problem(rng):
    n, d, m = 5000, 64, 20000
    y = rng.standard_normal((n, d)).astype(np.float32)
    h = (-0.5 * np.square(y).sum(axis=1)).astype(np.float32)  # Voronoi start: tight top scores
    x = (rng.random((m, d)) - 0.5).astype(np.float32)
    return x, y, h


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp32"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_triton_matches_the_torch_cuda_backend(cuda_problem, precision, k):
    from solver.cells.triton_index import TritonBackend

    x, y, h = cuda_problem
    xt = torch.from_numpy(x).cuda()
    ref_scores, ref_cells = CellIndex(y, h, backend="torch-cuda").search(xt, k)
    backend = TritonBackend(y, h, precision=precision)
    scores, cells = backend.search(xt, k)
    assert cells.device.type == "cuda" and cells.dtype == torch.int64
    ok = unambiguous(x, y, h, k)
    np.testing.assert_array_equal(cells.cpu().numpy()[ok], ref_cells.cpu().numpy()[ok])
    np.testing.assert_allclose(scores.cpu().numpy(), ref_scores.cpu().numpy(), rtol=1e-5, atol=1e-4)
    assert backend.fallbacks <= x.shape[0]


@pytest.mark.gpu
@needs_triton
def test_cuda_fused_estimate_with_triton_equals_estimate_with_triton(rng):
    from solver.cells.triton_index import TritonBackend

    n, d = 2000, 16
    y = (0.5 * rng.standard_normal((n, d))).astype(np.float32)
    backend = TritonBackend(y, np.zeros(n, np.float32))
    source = SourceMeasure(dim=d)
    spec = PassSpec(source=source, n_samples=200_000, seed=1, centres=True)
    ref, got = estimate(backend, spec), fused_estimate(backend, spec)
    np.testing.assert_array_equal(got.counts, ref.counts)
    np.testing.assert_array_equal(got.pairs, ref.pairs)
    np.testing.assert_array_equal(got.slab_counts, ref.slab_counts)
    np.testing.assert_allclose(got.mass_sums, ref.mass_sums, rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@needs_triton
def test_cell_index_offers_triton_first_on_cuda():
    assert available_backends()[0] == "triton"
    assert CellIndex(np.eye(4, dtype=np.float32), backend="auto").backend == "triton"
