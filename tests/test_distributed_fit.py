"""A fit over two gloo ranks (torchrun) reaches the single-process accuracy and heights."""

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


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit-ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run(
        [*cmd, str(ROOT / "tests" / "distributed_fit_worker.py"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**_clean_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [dict(np.load(out / f"fit-rank{r}.npz")) for r in range(2)]


@pytest.mark.slow
def test_two_ranks_fit_like_one_process(ranks):
    single = fit(worker.problem(), worker.config())
    assert single.converged and single.estimator == "host"
    lead, follower = ranks
    for got in ranks:
        assert str(got["estimator"]) == "distributed" and bool(got["converged"])
        assert float(got["l1"]) <= worker.TARGET
    # Every rank holds the same heights (the passes are all-reduced, the decisions agreed).
    np.testing.assert_array_equal(lead["heights"], follower["heights"])
    # The ranks see exactly the single process's samples; float sums differ only in rounding,
    # so the heights agree far inside the Monte Carlo tolerance (1 % of their spread).
    spread = np.ptp(single.heights)
    np.testing.assert_allclose(lead["heights"], single.heights, atol=0.01 * spread)
    assert abs(float(lead["l1"]) - single.accuracy.l1) <= 0.02


@pytest.mark.slow
def test_only_the_lead_calls_back_and_its_stop_stops_every_rank(ranks):
    lead, follower = ranks
    assert int(lead["callback_calls"]) == 3 and int(follower["callback_calls"]) == 0
    for got in ranks:
        assert str(got["stopped_reason"]) == "callback" and int(got["stopped_iterations"]) == 3


@pytest.mark.slow
def test_aeot_fit_over_two_ranks_publishes(tmp_path):
    from service.job_config import job_config
    from service.store import ModelStore
    from tests.service_helpers import env_for, make_settings, write_bundle

    settings = make_settings(tmp_path / "store")
    store = ModelStore(settings.store)
    store.register("tiny", write_bundle(tmp_path / "bundle", n=60, d=4), fit=job_config(settings))
    env = {k: v for k, v in env_for(settings).items() if k in _clean_env() or k.startswith("AEOT")}
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
    record = store.potential_record("tiny")
    assert record.version >= 1 and record.accuracy.l1 <= settings.target_l1
