"""Fault cases of the worker: a killed worker, a killed server, a damaged checkpoint, a
cancelled job that publishes, a step longer than the lease, a full disk, what jobs leave
behind. Real processes and filesystems, each wait bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs import _alive
from service.store import FIT_ATTEMPTS, RESERVE_FILE, ModelStore
from service.worker import Worker, job_config
from service.worker_process import WorkerProcess
from solver import Potential, PotentialConfig, load_state, make_problem
from tests.service_helpers import (
    ROOT,
    env_for,
    fill_disk,
    make_settings,
    tmpfs,
    wait_for,
    write_bundle,
)


def _store_with_model(tmp_path, **overrides):
    # A 2D Monte Carlo fit to a tight target: long enough to be killed mid-way, small per
    # iteration (the default exact method would finish before any kill).
    values = {
        "target_l1": 0.002,
        "checkpoint_every": 2,
        "publish_interval": 30.0,
        "fit_method": "newton",
    }
    settings = make_settings(tmp_path / "store", **{**values, **overrides})
    store = ModelStore(settings.store)
    bundle = write_bundle(tmp_path / "bundle", n=300, d=2)
    store.register("tiny", bundle, fit=job_config(settings))
    return settings, store


def _checkpointed(store, at_least=2):
    job = store.queue.job(1)
    return job.checkpoint_iteration is not None and job.checkpoint_iteration >= at_least


# Case 1: kill -9 of the server's worker: noticed, reported, restarted, the job resumes.
@pytest.mark.slow
def test_case1_killed_worker_is_restarted_reported_and_resumes(tmp_path):
    settings, store = _store_with_model(tmp_path, worker=True)
    app = create_app(settings, store=store, poll=False)
    with TestClient(app) as client:
        supervisor = app.state.worker
        assert wait_for(lambda: _checkpointed(store), timeout=60)
        first = supervisor.state.pid
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(lambda: supervisor.state.restarts == 1, timeout=10)
        ready = client.get("/readyz").json()
        assert ready["worker"]["restarts"] == 1 and "signal 9" in ready["worker"]["last_exit"]
        assert "aeot_worker_restarts_total 1.0" in client.get("/metrics").text
        assert not _alive(first)  # reaped: no zombie left behind

        def resumed():
            job = store.queue.job(1)
            return job.status == "running" and job.resumed_from is not None

        assert wait_for(resumed, timeout=30)
        print(f"fit resumed {time.monotonic() - killed_at:.1f} s after the kill")
        job = client.get("/models/tiny").json()["job"]
        assert job["reason"].startswith("worker died (signal 9")
        assert job["resumed_from"] >= 2 and supervisor.state.pid != first
        listing = client.get("/models").json()
        assert listing["worker"]["status"] == "running"


_STAND_IN = """
import time
from service.worker_process import WorkerProcess
from service.settings import Settings
WorkerProcess(Settings()).start()
time.sleep(600)
"""


# Case 2: kill -9 of the server: its worker is gone within 5 s, the job is free at once.
@pytest.mark.slow
def test_case2_worker_never_outlives_its_server(tmp_path):
    settings, store = _store_with_model(tmp_path)
    server = subprocess.Popen([sys.executable, "-c", _STAND_IN], env=env_for(settings), cwd=ROOT)
    try:
        assert wait_for(lambda: _checkpointed(store), timeout=60)
        worker_pid = int(store.queue.job(1).worker.rsplit(":", 1)[1])
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        assert wait_for(lambda: not _alive(worker_pid), timeout=5)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # The orphan checkpointed and handed the job back, or died holding a lease of a dead pid:
    # either way a new worker takes it now, not after stale_seconds.
    job = store.queue.claim("new-host:1", stale_seconds=3600)
    assert job is not None and job.id == 1
    mark = store.checkpoint_path(job).stat().st_mtime_ns
    time.sleep(0.5)
    assert store.checkpoint_path(job).stat().st_mtime_ns == mark  # nobody else writes it


# Case 2: a worker whose lease was taken over stops at once and never writes the job's files.
def test_case2_lease_taken_over_is_never_shared(tmp_path):
    settings, store = _store_with_model(tmp_path)
    old = Worker(store, settings)
    job = store.queue.claim(old.id, 30.0)
    assert store.queue.claim("other:1", stale_seconds=-1.0).id == job.id  # lease expired
    old.run_job(job)
    assert not store.checkpoint_path(job).exists()
    now = store.queue.job(job.id)
    assert now.status == "running" and now.worker == "other:1"
    assert store.catalog.potential("tiny") is None


# Case 9: a job cancelled by a refit cannot publish afterwards.
def test_case9_cancelled_job_never_publishes(tmp_path):
    settings, store = _store_with_model(tmp_path)
    job = store.queue.claim("w:1", 30.0)
    problem = make_problem(store.load_bundle("tiny").latents)
    config = PotentialConfig(samples_per_cell=8)
    potential = Potential.build(problem, np.zeros(problem.n_targets), seed=0, config=config)
    store.enqueue_fit("tiny", job_config(settings), replace=True)
    assert store.publish(job, potential, 7) is None
    assert store.catalog.published_versions() == {"tiny": 0}


# Case 6: a truncated or garbage checkpoint falls back to the previous one, and says so.
def test_case6_damaged_checkpoint_falls_back_to_the_previous(tmp_path):
    settings, store = _store_with_model(tmp_path, fit_max_iter=6)
    worker = Worker(store, settings)
    job = store.queue.claim(worker.id, 30.0)
    worker.run_job(job)
    path = store.checkpoint_path(job)
    previous = path.with_suffix(".prev.npz")
    newest, older = load_state(path).iteration, load_state(previous).iteration
    assert older < newest
    path.write_bytes(path.read_bytes()[:200])  # truncated
    state = store.load_checkpoint(job)
    assert state is not None and state.iteration == older
    assert "resumed from the previous one" in store.queue.job(job.id).reason
    previous.write_bytes(b"not a checkpoint" * 8)  # garbage
    assert store.load_checkpoint(job) is None
    assert "restarted from iteration 0" in store.queue.job(job.id).reason


# Case 6: a failed fit is queued again (a bounded number of times), not left failed for good.
def test_case6_failed_fit_is_retried(tmp_path):
    settings, store = _store_with_model(tmp_path)
    retried = []
    for _ in range(FIT_ATTEMPTS):
        job = store.queue.claim("w:1", 30.0)
        assert job is not None
        store.queue.finish(job.id, "w:1", "failed", "error", "boom")
        retried.append(len(store.ensure_fit_jobs(job_config(settings))))
    assert retried == [1] * (FIT_ATTEMPTS - 1) + [0]


# A fit step longer than the lease: the heartbeat comes from its own thread, so no other
# worker may take the job over meanwhile (it could when the heartbeat came from the step).
@pytest.mark.slow
def test_heartbeat_outlives_a_step_longer_than_the_lease(tmp_path):
    # Every step ends with the worker's own independent check (publish_interval 0) on 36M
    # samples: about 3 s per step on an idle 2-vCPU box, against a lease of one second.
    settings, store = _store_with_model(
        tmp_path, stale_seconds=1.0, publish_interval=0.0, check_samples_per_cell=120000
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.worker"], env=env_for(settings), cwd=ROOT
    )
    try:
        assert wait_for(lambda: store.queue.job(1).status == "running", timeout=60)
        steps, taken = [], []
        last = (store.queue.job(1).iteration, time.monotonic())
        deadline = time.monotonic() + 90
        while len(steps) < 3 and time.monotonic() < deadline:
            intruder = store.queue.claim("intruder:1", stale_seconds=settings.stale_seconds)
            if intruder is not None:
                taken.append(intruder.iteration)
                break
            job = store.queue.job(1)
            assert job.status == "running"
            if job.iteration != last[0]:
                steps.append(time.monotonic() - last[1])
                last = (job.iteration, time.monotonic())
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert taken == [], "another worker took the job over during a long step"
    assert len(steps) >= 3 and max(steps) > 2 * settings.stale_seconds, steps


# A full disk under a supervised worker: it waits with back-off, it does not exit and get
# restarted in a loop; the fit resumes when space returns.
@pytest.mark.slow
def test_full_disk_makes_the_worker_wait_not_restart(tmp_path):
    with tmpfs(tmp_path / "fs", "24m") as fs:
        settings, store = _store_with_model(fs, worker=True, stale_seconds=2.0)
        supervisor = WorkerProcess(settings, store)
        supervisor.start()
        try:
            assert wait_for(lambda: _checkpointed(store), timeout=60)
            fill_disk(fs)
            assert wait_for(lambda: store.queue.job(1).status == "queued", timeout=30)
            assert "disk is full" in store.queue.job(1).reason
            time.sleep(4)  # several rounds of waiting
            assert supervisor.state.status == "running" and supervisor.state.restarts == 0
            (fs / "filler").unlink()

            def resumed():
                job = store.queue.job(1)
                return job.status == "running" and job.resumed_from is not None

            assert wait_for(resumed, timeout=60)
            assert supervisor.state.restarts == 0
            assert (store.root / RESERVE_FILE).stat().st_size > 0  # written again
        finally:
            supervisor.stop()


# What jobs leave behind is removed after each job: staging entries of dead processes,
# checkpoints of finished jobs beyond keep_checkpoints, job rows beyond job_history.
def test_worker_tidies_staging_checkpoints_and_job_history(tmp_path):
    settings, store = _store_with_model(
        tmp_path, fit_max_iter=4, keep_checkpoints=1, job_history=3, fit_method="auto"
    )
    host = socket.gethostname()
    staging = store.root / "staging"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for name in (f"{host}-{dead}-x", f"{host}-{os.getpid()}-y", "tmpold", "tmpnew", "far-1-z"):
        (staging / name).mkdir()
    hour_ago = time.time() - 3600 - 60
    os.utime(staging / "tmpold", (hour_ago, hour_ago))
    worker = Worker(store, settings)
    for _ in range(5):
        store.enqueue_fit("tiny", job_config(settings), replace=True)
        worker.run(idle_exit=True)
    jobs = store.queue.jobs("tiny")
    assert [j.id for j in jobs] == [6, 5, 4] and {j.status for j in jobs} == {"done"}
    files = sorted(p.name for p in (store.model_dir("tiny") / "jobs").iterdir())
    assert files == ["6.npz", "6.prev.npz"]
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [f"{host}-{os.getpid()}-y", "tmpnew", "far-1-z"]
    )
