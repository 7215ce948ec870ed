"""The fit worker: publication, exact resume after SIGKILL, checkpoint-and-exit on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from service.job_config import JobConfig, job_config
from service.store import ModelStore
from service.worker import Worker
from solver import FitConfig, backend_for_device, fit, make_problem
from tests.service_helpers import ROOT, env_for, make_settings, wait_for, write_bundle


def _store_with_model(tmp_path, n=200, d=4, **overrides):
    settings = make_settings(tmp_path / "store", **overrides)
    store = ModelStore(settings.store)
    store.register("tiny", write_bundle(tmp_path / "bundle", n=n, d=d), fit=job_config(settings))
    return settings, store


def _uninterrupted(store, settings):
    problem = make_problem(store.load_bundle("tiny").latents)
    config = FitConfig(
        target_l1=settings.target_l1,
        seed=settings.fit_seed,
        max_iter=settings.fit_max_iter,
        backend=backend_for_device("cpu"),  # the worker's choice on a CPU host
    )
    return fit(problem, config)


def _start_worker(settings):
    return subprocess.Popen(
        [sys.executable, "-m", "service.worker"], env=env_for(settings), cwd=ROOT
    )


def test_worker_fits_publishes_and_reports_progress(tmp_path):
    settings, store = _store_with_model(tmp_path)
    assert Worker(store, settings).run(idle_exit=True) == 1
    (job,) = store.queue.jobs("tiny")
    assert job.status == "done" and job.reason == "target"
    assert job.accuracy.l1 <= settings.target_l1 and job.accuracy.empty_cells == 0
    assert job.checkpoint_iteration is not None and job.elapsed > 0
    potential = store.potential("tiny")
    record = store.catalog.potential("tiny")
    assert record.version >= 1 and record.accuracy.l1 <= 0.2
    assert potential.accuracy == record.accuracy
    assert potential.heights.shape == (200,) and potential.singular_set.n_pairs > 0
    # The worker's fit is the solver's fit: same final state as a direct call.
    direct = _uninterrupted(store, settings)
    np.testing.assert_array_equal(store.load_checkpoint(job).heights, direct.state.heights)
    # Nothing left to do: the model has a potential for its bundle.
    assert store.ensure_fit_jobs(JobConfig()) == []


@pytest.mark.slow
def test_sigkill_mid_fit_then_resume_continues_exactly(tmp_path):
    # Progress reaches the catalogue with the lease's heartbeat (at least once a second): the
    # fit must outlast that beat after its fourth iteration, so it runs to L1 0.01 (28
    # iterations, 3.2 s on an idle 2-vCPU box, most of them after the fourth).
    settings, store = _store_with_model(
        tmp_path, target_l1=0.01, checkpoint_every=2, publish_interval=30.0
    )
    proc = _start_worker(settings)
    try:

        def checkpointed():
            job = store.queue.job(1)
            return job.checkpoint_iteration is not None and job.checkpoint_iteration >= 4

        assert wait_for(checkpointed, timeout=60)
        assert store.queue.job(1).status == "running", "the fit ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = store.queue.job(1)
    assert killed.status == "running"  # the dead worker could not say anything
    saved = store.load_checkpoint(killed).iteration
    assert saved >= 4
    restarted = _start_worker(settings)
    try:
        assert wait_for(lambda: store.queue.job(1).status == "done", timeout=120)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)
    job = store.queue.job(1)
    assert job.resumed_from == saved and job.reason == "target"
    direct = _uninterrupted(store, settings)
    np.testing.assert_array_equal(store.load_checkpoint(job).heights, direct.state.heights)
    assert store.load_checkpoint(job).iteration == direct.iterations


@pytest.mark.slow
def test_sigterm_checkpoints_and_hands_the_job_back(tmp_path):
    # d = 4: a Monte Carlo fit runs long enough to be interrupted (in d <= 3 the exact fit
    # is done in a few iterations). A short lease makes the worker report its iteration every
    # 0.05 s: with the once-a-second beat, an idle machine finished the fit before the signal.
    settings, store = _store_with_model(
        tmp_path, n=300, d=4, target_l1=0.01, checkpoint_every=50, stale_seconds=0.2
    )
    proc = _start_worker(settings)
    try:
        assert wait_for(lambda: store.queue.job(1).iteration >= 5, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    job = store.queue.job(1)
    assert job.status == "queued" and job.reason == "worker stopped"
    state = store.load_checkpoint(job)
    assert state is not None and state.iteration >= job.iteration >= 5


@pytest.mark.parametrize("kind", ["delete", "replace"])
def test_cancelled_job_stops_the_fit(tmp_path, kind):
    # Heartbeats come from the lease's thread every stale_seconds / 4 (at most 1 s): a short
    # lease makes the third one arrive well before the fit's end on any machine.
    settings, store = _store_with_model(tmp_path, n=300, d=4, target_l1=0.02, stale_seconds=0.2)
    worker = Worker(store, settings)
    job = store.queue.claim(worker.id, 30.0)
    calls = []

    original = store.queue.heartbeat

    def heartbeat(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            if kind == "delete":
                store.delete("tiny")
            else:
                store.enqueue_fit("tiny", job_config(settings, target_l1=0.5), replace=True)
        return original(*args, **kwargs)

    store.queue.heartbeat = heartbeat  # the queue the worker's lease writes to
    worker.run_job(job)
    assert store.queue.job(job.id).status == "cancelled"
    assert len(calls) == 3  # the fit stopped at the first heartbeat after cancellation


def test_cli_fit_runs_the_fit_in_the_foreground_and_publishes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app as cli_app

    settings, store = _store_with_model(tmp_path, n=80, d=3)
    for key, value in settings.to_env().items():  # the CLI reads AEOT_* like the server
        monkeypatch.setenv(key, value)
    args = ["fit", "tiny", "--store", str(settings.store), "--target-l1", "0.1"]
    run = CliRunner().invoke(cli_app, args)
    assert run.exit_code == 0, run.output
    potential = store.catalog.potential("tiny")
    assert f"done (target); published version {potential.version}" in run.output
    assert potential.version >= 1 and potential.accuracy.l1 <= 0.1
