"""Monte Carlo statistics on the search device equal the host estimate."""

import numpy as np
import pytest
import torch

from solver import CellIndex, PassSpec, SourceMeasure, available_backends, estimate
from solver.estimation.fused import fused_estimate, search_device
from solver.estimation.pairs import PairTable

CPU_BACKENDS = available_backends("cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("k", "gap_width", "centres", "sampler"),
    [
        (1, None, False, "sobol"),
        (2, None, True, "sobol"),
        (2, 0.01, True, "random"),
        (3, None, False, "random"),
    ],
)
def test_fused_estimate_equals_estimate(backend, k, gap_width, centres, sampler, rng):
    n, d = 80, 4
    y = (0.3 * rng.standard_normal((n, d))).astype(np.float32)
    h = (0.01 * rng.standard_normal(n)).astype(np.float32)
    index = CellIndex(y, h, backend=backend)
    source = SourceMeasure(dim=d, sampler=sampler)
    args = dict(k=k, gap_width=gap_width, centres=centres, batch_size=1000)
    spec = PassSpec(source=source, n_samples=4500, seed=3, **args)
    ref, got = estimate(index, spec), fused_estimate(index, spec)
    assert got.n_samples == ref.n_samples and got.gap_width == ref.gap_width
    for field in ("counts", "pairs", "pair_counts", "slab_counts"):
        np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
        assert getattr(got, field).dtype == np.int64
    np.testing.assert_allclose(got.energy, ref.energy, rtol=1e-12)
    np.testing.assert_allclose(got.median_gap, ref.median_gap, rtol=1e-12)
    np.testing.assert_allclose(got.transport_cost, ref.transport_cost, rtol=1e-12)
    if centres:
        np.testing.assert_allclose(got.mass_sums, ref.mass_sums, rtol=1e-12, atol=1e-12)
    else:
        assert got.mass_sums is None
    if k >= 2:
        assert len(ref.pairs) > 0 and ref.slab_counts.sum() > 0


def test_pair_table_merges_chunks_like_one_count():
    table = PairTable(5, torch.device("cpu"))
    first = torch.tensor([0, 4, 1, 0, 3])
    second = torch.tensor([4, 0, 2, 1, 1])
    table.add_samples(first[:2], second[:2], torch.tensor([True, False]))
    table.add_samples(first[2:], second[2:], torch.tensor([True, True, False]))
    pairs, totals, slabs = table.to_numpy()
    np.testing.assert_array_equal(pairs, [[0, 1], [0, 4], [1, 2], [1, 3]])
    np.testing.assert_array_equal(totals, [1, 2, 1, 1])
    np.testing.assert_array_equal(slabs, [1, 1, 1, 0])


def test_a_pass_refuses_bad_settings_on_every_estimator():
    index = CellIndex(np.eye(3, dtype=np.float32), backend="torch")
    source = SourceMeasure(dim=3)
    for field, value in (("n_samples", 0), ("k", 0), ("batch_size", 0)):
        with pytest.raises(ValueError, match=f"{field} must be >= 1, got 0"):
            PassSpec(**{"source": source, "n_samples": 10, "seed": 0, field: value})
    other = PassSpec(source=SourceMeasure(dim=2), n_samples=10, seed=0)
    for run in (estimate, fused_estimate):
        with pytest.raises(ValueError, match="source dim 2 != index dim 3"):
            run(index, other)
    assert PassSpec(source=source, n_samples=10, seed=0, k=5).k_for(index) == 3  # clipped to N


def test_host_backends_accumulate_on_the_cpu():
    index = CellIndex(np.eye(2, dtype=np.float32), backend="torch")
    assert search_device(index) == torch.device("cpu")


@pytest.mark.gpu
def test_cuda_estimate_equals_the_host_estimate_with_the_same_backend(rng):
    n, d = 2000, 16
    y = (0.5 * rng.standard_normal((n, d))).astype(np.float32)
    index = CellIndex(y, backend="torch-cuda")
    source = SourceMeasure(dim=d)
    assert search_device(index).type == "cuda"
    spec = PassSpec(source=source, n_samples=200_000, seed=1, centres=True)
    ref, got = estimate(index, spec), fused_estimate(index, spec)
    np.testing.assert_array_equal(got.counts, ref.counts)
    np.testing.assert_array_equal(got.pairs, ref.pairs)
    np.testing.assert_array_equal(got.slab_counts, ref.slab_counts)
    np.testing.assert_allclose(got.mass_sums, ref.mass_sums, rtol=1e-9, atol=1e-9)


def test_pair_table_counts_every_sample_through_many_merges(monkeypatch, rng):
    # Small merge thresholds: every path (sample keys, pre-counted chunks, sorted merges into
    # the table, and the general merge when both wait) runs many times against a dict count.
    monkeypatch.setattr("solver.estimation.pairs._MERGE_MIN", 50)
    n = 30
    table = PairTable(n, torch.device("cpu"))
    truth: dict[tuple[int, int], list[int]] = {}
    for batch in range(40):
        size = int(rng.integers(0, 60))
        first = rng.integers(0, n, size)
        second = (first + 1 + rng.integers(0, n - 1, size)) % n
        slab = rng.random(size) < 0.4
        for a, b, s in zip(first.tolist(), second.tolist(), slab.tolist(), strict=True):
            counts = truth.setdefault((min(a, b), max(a, b)), [0, 0])
            counts[0] += 1
            counts[1] += int(s)
        if batch % 7 == 3:  # the same samples, pre-counted (as a rank's merged table arrives)
            codes = torch.from_numpy(np.minimum(first, second) * n + np.maximum(first, second))
            table.add_counts(codes, torch.ones_like(codes), torch.from_numpy(slab.astype(np.int64)))
        else:
            table.add_samples(
                torch.from_numpy(first), torch.from_numpy(second), torch.from_numpy(slab)
            )
    pairs, totals, slabs = table.to_numpy()
    keys = sorted(truth)
    np.testing.assert_array_equal(pairs, np.array(keys).reshape(-1, 2))
    np.testing.assert_array_equal(totals, [truth[k][0] for k in keys])
    np.testing.assert_array_equal(slabs, [truth[k][1] for k in keys])
    assert totals.dtype == slabs.dtype == np.int64
