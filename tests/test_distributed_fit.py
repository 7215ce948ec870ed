"""A fit over two gloo ranks (torchrun) reaches the single-process accuracy and heights."""

import json
import subprocess
import sys
from pathlib import Path

import distributed_fit_worker as worker
import numpy as np
import pytest
import torch.distributed as dist
from test_distributed import _clean_env

from solver import fit

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
ROOT = Path(__file__).resolve().parents[1]


def _launch(out: Path, world: int, *args: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    run = subprocess.run(
        [*cmd, "--nproc-per-node", str(world), str(ROOT / "tests" / "distributed_fit_worker.py")]
        + [str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_clean_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [dict(np.load(out / f"fit-rank{r}.npz")) for r in range(world)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("fit-ranks"), 2)


@pytest.fixture(scope="module")
def sharded_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded-ranks")
    results = _launch(out, 3, "sharded")
    memory = [json.loads((out / f"memory-rank{r}.json").read_text()) for r in range(3)]
    return results, memory


@pytest.fixture(scope="module")
def single():
    result = fit(worker.problem(), worker.config())
    assert result.converged and result.estimator == "host"
    return result


def _same_fit_as_one_process(results, single):
    lead = results[0]
    for got in results:
        assert str(got["estimator"]) == "distributed" and bool(got["converged"])
        assert float(got["l1"]) <= worker.TARGET
        # Every rank holds the same heights (the passes are all-reduced, the decisions agreed).
        np.testing.assert_array_equal(got["heights"], lead["heights"])
    # The ranks see exactly the single process's samples and find the same cells; only float
    # sums differ in rounding (the energy, summed in another order), and no decision of the
    # fit reads them: the same iterations, the same heights to rounding, the same accuracy.
    assert int(lead["iterations"]) == single.iterations
    np.testing.assert_allclose(lead["heights"], single.heights, rtol=0, atol=1e-9)
    assert float(lead["l1"]) == pytest.approx(single.accuracy.l1, abs=1e-12)


@pytest.mark.slow
def test_two_ranks_fit_like_one_process(ranks, single):
    _same_fit_as_one_process(ranks, single)


@pytest.mark.slow
def test_three_ranks_with_sharded_targets_fit_like_one_process(sharded_ranks, single):
    """33 / 33 / 34 targets per rank (uneven), the hierarchical start's coarse fit included."""
    results, _ = sharded_ranks
    _same_fit_as_one_process(results, single)


@pytest.mark.slow
def test_a_sharded_index_holds_a_share_of_the_targets_per_rank(sharded_ranks):
    _, memory = sharded_ranks
    assert sorted(m["rows"] for m in memory) == [10000, 10000, 10001]
    n = sum(m["rows"] for m in memory)
    for m in memory:
        # The N x d part divides by W; the O(N) vectors (heights, squared norms: 16 bytes a
        # target) stay whole on every rank.
        assert m["sharded"] <= m["whole"] / 3 + 16 * n + 64 * 1024
        assert m["sharded"] >= 0.3 * m["whole"]  # the measure sees the layouts
        assert m["whole"] >= 30 * n * 4  # the one-process layout holds every target


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_only_the_lead_calls_back_and_its_stop_stops_every_rank(mode, ranks, sharded_ranks):
    results = ranks if mode == "replicated" else sharded_ranks[0]
    assert int(results[0]["callback_calls"]) == 3
    assert all(int(got["callback_calls"]) == 0 for got in results[1:])
    for got in results:
        assert str(got["stopped_reason"]) == "callback" and int(got["stopped_iterations"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["", "true"], ids=["replicated", "sharded"])
def test_aeot_fit_over_two_ranks_publishes(shard, tmp_path):
    from service.job_config import job_config
    from service.store import ModelStore
    from tests.service_helpers import env_for, make_settings, write_bundle

    settings = make_settings(tmp_path / "store")
    store = ModelStore(settings.store)
    store.register("tiny", write_bundle(tmp_path / "bundle", n=60, d=4), fit=job_config(settings))
    env = {k: v for k, v in env_for(settings).items() if k in _clean_env() or k.startswith("AEOT")}
    if shard:
        env["AEOT_FIT_SHARD_TARGETS"] = shard
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run(
        [*cmd, "-m", "service.cli", "fit", "tiny", "--store", str(settings.store)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "done (target); published version" in run.stdout
    assert "rank 1 followed 1 fit(s)" in run.stdout  # the fit ran over both ranks
    record = store.catalog.potential("tiny")
    assert record.version >= 1 and record.accuracy.l1 <= settings.target_l1
    (done,) = [
        job for job in store.queue.jobs("tiny") if job.kind == "fit" and job.status == "done"
    ]
    assert done.config.fit.shard_targets is (True if shard else None)  # the setting reached it
