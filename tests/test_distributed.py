"""Two gloo ranks on the CPU (torchrun) give the single-process estimate."""

import os
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import numpy as np
import pytest
import torch
import torch.distributed as dist
from oracles import ranked

from solver import CellIndex, PassSpec, SourceMeasure, estimate
from solver.estimation.distributed import ShardedIndex, distributed_estimate, shard_bounds

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
ROOT = Path(__file__).resolve().parents[1]


def _clean_env():
    """The parent's environment without any torch.distributed rendezvous variables."""
    drop = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "tests" / "distributed_worker.py"),
        str(out),
    ]
    run = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_clean_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = {
        name: [dict(np.load(out / f"{name}-rank{r}.npz")) for r in range(2)]
        for name in [*worker.CASES, "sharded-ties"]
    }
    results["deadline"] = [(out / f"deadline-rank{r}.txt").read_text() for r in range(2)]
    results["owners"] = [dict(np.load(out / f"owners-rank{r}.npz")) for r in range(2)]
    return results


@pytest.mark.slow
def test_sharded_rows_and_candidate_scores_equal_one_process(rank_results):
    y, h = worker.problem()
    index = CellIndex(y, h, backend="torch")
    for got in rank_results["owners"]:
        cells = got["candidates"]
        np.testing.assert_array_equal(got["rows"], y[cells[:, 0]])
        np.testing.assert_array_equal(got["norms"], index.squared_norms())
        want_s, want_c = index.candidate_scores(got["x"], h.astype(np.float64), cells, 2)
        np.testing.assert_array_equal(got["cells"], want_c)
        np.testing.assert_array_equal(got["scores"], want_s)


@pytest.mark.slow
def test_a_passed_deadline_stops_the_pass_on_every_rank(rank_results):
    assert rank_results["deadline"] == ["True", "True"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(worker.CASES))
def test_two_ranks_equal_the_single_process_estimate(rank_results, case):
    sharded, k, gap, centres, sampler = worker.CASES[case]
    y, h = worker.problem()
    ref = estimate(
        CellIndex(y, h, backend="torch"),
        PassSpec(
            source=SourceMeasure(dim=worker.DIM, sampler=sampler),
            n_samples=worker.SAMPLES,
            seed=3,
            k=k,
            gap_width=gap,
            centres=centres,
            batch_size=worker.BATCH,
        ),
    )
    for got in rank_results[case]:
        np.testing.assert_array_equal(got["counts"], ref.counts)
        np.testing.assert_array_equal(got["pairs"], ref.pairs)
        np.testing.assert_array_equal(got["pair_counts"], ref.pair_counts)
        np.testing.assert_array_equal(got["slab_counts"], ref.slab_counts)
        assert float(got["gap_width"]) == ref.gap_width
        np.testing.assert_allclose(float(got["median_gap"]), ref.median_gap, rtol=1e-12)
        np.testing.assert_allclose(float(got["energy"]), ref.energy, rtol=1e-12)
        # Sharded: no rank holds every target, so the cost comes from the float32 scores.
        cost_rtol = 1e-6 if sharded else 1e-12
        np.testing.assert_allclose(float(got["cost"]), ref.transport_cost, rtol=cost_rtol)
        if centres:
            np.testing.assert_allclose(got["mass_sums"], ref.mass_sums, rtol=1e-12, atol=1e-12)
    if k >= 2:
        assert ref.pairs.shape[0] > 0 and ref.slab_counts.sum() > 0


@pytest.mark.slow
def test_sharded_search_gives_equal_scores_to_the_lower_cell(rank_results):
    """Exact duplicates held by both ranks: the merged top-5 follows the tie rule."""
    for got in rank_results["sharded-ties"]:
        ref_scores, ref_cells = ranked(got["x"], got["y"], got["h"], 5)
        np.testing.assert_array_equal(got["cells"], ref_cells)
        np.testing.assert_array_equal(got["scores"], ref_scores.astype(np.float32))
        lower = got["cells"] < 32
        assert (lower & ~lower[:, :1]).any()  # some lists hold cells of both shards


def test_shard_bounds_cover_every_target_once():
    for n, world in [(10, 3), (7, 7), (60, 2)]:
        bounds = [shard_bounds(n, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] and a[1] > a[0] for a, b in zip(bounds, bounds[1:], strict=False))
    with pytest.raises(ValueError, match="world_size"):
        shard_bounds(2, 3, 0)


def test_estimate_without_a_process_group_is_refused():
    assert not dist.is_initialized()
    index = CellIndex(np.eye(2, dtype=np.float32), backend="torch")
    with pytest.raises(ValueError, match="initialised"):
        distributed_estimate(index, PassSpec(source=SourceMeasure(dim=2), n_samples=10, seed=0))


@pytest.mark.slow
def test_single_rank_group_matches_the_host_estimate(tmp_path):
    """World size 1 in this process: both modes reduce to the plain estimate."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdv", rank=0, world_size=1)
    try:
        y, h = worker.problem()
        source = SourceMeasure(dim=worker.DIM)
        spec = PassSpec(source=source, n_samples=3000, seed=5, batch_size=1000)
        ref = estimate(CellIndex(y, h, backend="torch"), spec)
        for index in (CellIndex(y, h, backend="torch"), ShardedIndex(y, h, backend="torch")):
            got = distributed_estimate(index, spec)
            np.testing.assert_array_equal(got.counts, ref.counts)
            np.testing.assert_array_equal(got.pairs, ref.pairs)
            np.testing.assert_array_equal(got.slab_counts, ref.slab_counts)
        assert isinstance(index.search(torch.zeros(2, worker.DIM), 2)[1], torch.Tensor)
    finally:
        dist.destroy_process_group()
