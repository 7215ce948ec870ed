"""The model store and its catalogue: registration, jobs as a queue, publication, crashes."""

from __future__ import annotations

import io
import os
import tarfile
import time

import numpy as np
import pytest

from service.catalog import Catalog
from service.job_config import JobConfig
from service.jobs import JobQueue, Progress
from service.store import ModelExists, ModelStore, StoreError, UnknownModel
from solver import AccuracyReport, FitConfig, Potential, PotentialConfig, make_problem
from tests.service_helpers import bundle_archive, write_bundle


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store")


@pytest.fixture
def bundle(tmp_path):
    return write_bundle(tmp_path / "bundle", n=50, d=2)


def test_register_lists_model_and_queues_fit(store, bundle):
    record = store.register("tiny", bundle, fit=JobConfig(fit=FitConfig(target_l1=0.2)))
    assert (record.name, record.n_latents, record.dim) == ("tiny", 50, 2)
    assert [m.name for m in store.catalog.models()] == ["tiny"]
    assert store.load_bundle("tiny").latents.shape == (50, 2)
    jobs = store.queue.jobs("tiny")
    assert len(jobs) == 1 and jobs[0].status == "queued" and jobs[0].config.fit.target_l1 == 0.2
    assert bundle.exists()  # copied, not moved


def test_register_rejects_duplicates_bad_names_and_bad_bundles(store, bundle, tmp_path):
    store.register("tiny", bundle)
    with pytest.raises(ModelExists):
        store.register("tiny", bundle)
    for bad in ("", "UPPER", "../x", "a" * 65, "sp ace"):
        with pytest.raises(StoreError, match="must match"):
            store.register(bad, bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a valid model bundle"):
        store.register("other", tmp_path / "empty")
    assert [m.name for m in store.catalog.models()] == ["tiny"]


def test_register_archive_and_reject_path_traversal(store, bundle):
    record = store.register_archive("up", bundle_archive(bundle))
    assert record.n_latents == 50
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tf:
        data = b"x"
        info = tarfile.TarInfo("../../escape.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(StoreError, match="escapes"):
        store.register_archive("evil", evil.getvalue())
    with pytest.raises(StoreError):
        store.register_archive("junk", b"not an archive at all")
    assert not (store.root.parent / "escape.txt").exists()
    assert [m.name for m in store.catalog.models()] == ["up"]


def test_publish_roundtrip_and_versions(store, bundle):
    store.register("tiny", bundle, fit=JobConfig())
    job = store.queue.claim("me:1", 30.0)
    problem = make_problem(store.load_bundle("tiny").latents)
    acc = AccuracyReport(l1=0.1, max_rel_error=0.5, empty_cells=0, noise_floor=0.05, n_samples=99)
    config = PotentialConfig(samples_per_cell=8)
    heights = np.linspace(-0.1, 0.1, problem.n_targets)
    first = Potential.build(problem, heights, seed=0, config=config, accuracy=acc)
    second = Potential.build(problem, heights + 1, seed=0, config=config)
    assert store.publish(job, first, 7) == 1
    assert store.publish(job, second, 9) == 2
    latest = store.potential("tiny")
    assert store.catalog.potential("tiny").version == 2
    assert store.catalog.potential("tiny").iteration == 9
    np.testing.assert_array_equal(latest.heights, heights + 1)
    np.testing.assert_array_equal(latest.inverse, problem.inverse)
    assert latest.accuracy == second.accuracy  # measured by build, stored in file and row
    assert store.catalog.potential("tiny", version=1).accuracy == acc
    assert store.potential("tiny", version=1).accuracy == acc
    assert store.catalog.published_versions() == {"tiny": 2}


def test_claim_heartbeat_finish_and_dead_worker_reclaim(store, bundle):
    store.register("tiny", bundle, fit=JobConfig())
    queue = JobQueue(Catalog(store.root / "catalog.sqlite3"))  # the queue itself, under the store
    assert queue.claim("w:1", 30.0).status == "running"
    assert queue.claim("w:2", 30.0) is None  # owned, heartbeat fresh
    assert queue.heartbeat(1, "w:1", Progress(iteration=5, elapsed=1.0, eta=3.0))
    assert not queue.heartbeat(1, "w:2")  # not the owner
    job = queue.job(1)
    assert (job.iteration, job.eta) == (5, 3.0)
    # A worker on this host whose pid is gone: its job is reclaimed at once.
    dead = f"{os.uname().nodename}:{2**22 + 12345}"
    queue._update_owned(1, "w:1", {"worker": dead})
    assert queue.claim("w:3", 30.0).worker == "w:3"
    # Stale heartbeat (another host): reclaimed after stale_seconds.
    queue._update_owned(1, "w:3", {"worker": "elsewhere:1", "heartbeat": time.time() - 60})
    assert queue.claim("w:4", 30.0).id == 1
    assert queue.finish(1, "w:4", "done", "target")
    assert queue.job(1).status == "done" and queue.claim("w:5", 30.0) is None


def test_ensure_fit_jobs_and_delete(store, bundle):
    store.register("tiny", bundle)
    assert [j.model for j in store.ensure_fit_jobs(JobConfig())] == ["tiny"]
    assert store.ensure_fit_jobs(JobConfig()) == []  # already queued
    store.delete("tiny")
    assert store.catalog.models() == [] and not store.model_dir("tiny").exists()
    assert store.queue.jobs("tiny")[0].status == "cancelled"
    with pytest.raises(UnknownModel):
        store.delete("tiny")
    store.register("tiny", bundle)  # the name is free again
    assert store.model("tiny").published_version == 0


def test_store_survives_leftovers_of_a_crash(store, bundle):
    # A bundle directory renamed into place but never catalogued, and a torn temp file.
    orphan = store.model_dir("tiny")
    orphan.mkdir(parents=True)
    (orphan / "junk").write_text("x")
    (store.root / "staging" / ".half.tmp").write_bytes(b"\0" * 10)
    reopened = ModelStore(store.root)
    assert reopened.catalog.models() == []
    reopened.register("tiny", bundle)
    assert not (reopened.model_dir("tiny") / "junk").exists()
    assert reopened.load_bundle("tiny").latents.shape == (50, 2)
