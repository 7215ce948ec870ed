"""Training from user data: source detection, plans, resumable training into the store, API jobs."""

from __future__ import annotations

import gzip
import struct
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models import (
    DataOptions,
    DatasetConfig,
    ImageDataset,
    TrainPlan,
    dataset_config_for,
    detect_source,
    load_bundle,
    load_plan_data,
    train_autoencoder,
    train_plan,
)
from models.runtime import available_cores
from service.app import create_app
from service.names import sanitise_name
from service.store import ModelStore, TrainingCancelled
from service.training import (
    checkpoint_path,
    resolve_dataset,
    run_train_job,
    train_into_store,
)
from service.worker import Worker
from tests.service_helpers import API_KEY, make_settings, write_bundle

KEY = {"X-API-Key": API_KEY}


def write_idx(directory: Path, n: int = 40, seed: int = 0, size: int = 8) -> Path:
    """A gzipped MNIST-style train split of ``n`` random ``size`` x ``size`` images."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 3, n).astype(np.uint8)
    for stem, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (directory / f"{stem}.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    return directory


def write_npz(path: Path, n: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 8, 8)).astype(np.float32)
    np.savez(path, images=images, labels=rng.integers(0, 4, n))
    return path


def write_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for k, label in enumerate(("cats", "dogs")):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((10, 12)) * 255 * (k + 1) / 2).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


# A training plan that takes well under a second on one core.
def tiny_plan(data: DatasetConfig, **overrides: object) -> TrainPlan:
    values: dict[str, object] = {"epochs": 2, "decoder_epochs": 1, "device": "cpu", "threads": 1}
    values.update(overrides)
    return TrainPlan(data=data, **values)  # type: ignore[arg-type]


def test_sources_are_detected_from_what_is_on_disk(tmp_path):
    assert detect_source(write_idx(tmp_path / "mnistish")) == "idx"
    assert detect_source(write_npz(tmp_path / "a.npz")) == "arrays"
    np.save(tmp_path / "b.npy", np.zeros((3, 8, 8), np.float32))
    assert detect_source(tmp_path / "b.npy") == "arrays"
    assert detect_source(write_folder(tmp_path / "pets")) == "folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no IDX files"):
        detect_source(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        detect_source(tmp_path / "nothing")


def test_named_idx_sets_are_found_under_the_roots(tmp_path):
    write_idx(tmp_path / "fashion-mnist")
    config = dataset_config_for("fashion-mnist", roots=(str(tmp_path),))
    assert config.source == "idx" and config.name == "fashion-mnist"
    assert Path(config.path or "") == tmp_path / "fashion-mnist"
    assert dataset_config_for("digits").source == "digits"
    folder = dataset_config_for(str(write_folder(tmp_path / "pets")))
    assert folder.image_size == (28, 28) and folder.name == "pets"
    with pytest.raises(ValueError, match="neither a path nor an IDX data set"):
        dataset_config_for("kmnist", roots=(str(tmp_path),))


def test_plans_round_trip_and_pick_the_recipe_by_image_size(tmp_path):
    plan = TrainPlan(data=dataset_config_for(str(write_folder(tmp_path / "p"))), subset=5, seed=3)
    assert TrainPlan.from_dict(plan.to_dict()) == plan
    model, recipe = plan.resolve((1, 28, 28))
    assert model.arch == "conv" and model.latent_dim == 32
    assert (recipe.max_joint_epochs, recipe.decoder_epochs, recipe.seed) == (30, 10, 3)
    small, small_recipe = TrainPlan(data=DatasetConfig(), epochs=9).resolve((1, 8, 8))
    assert small.arch == "mlp" and small.latent_dim == 8
    assert (small_recipe.max_joint_epochs, small_recipe.decoder_epochs) == (9, 3)
    assert recipe.decoder_schedule == "constant"
    cosine = replace(plan, decoder_schedule="cosine")
    assert TrainPlan.from_dict(cosine.to_dict()) == cosine
    assert cosine.resolve((1, 28, 28))[1].decoder_schedule == "cosine"
    with pytest.raises(ValueError, match="decoder_schedule"):
        TrainPlan(data=DatasetConfig(), decoder_schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subset must be >= 1"):
        TrainPlan(data=DatasetConfig(), subset=0)
    with pytest.raises(ValueError, match="unknown dataset config keys"):
        TrainPlan.from_dict({**plan.to_dict(), "data": {"source": "idx", "colour": 1}})


def test_checkpoint_names_of_earlier_plans_stay_the_same(tmp_path):
    # The name a plan's checkpoint had before the decoder schedule option existed: a run
    # interrupted then resumes after an upgrade.
    store = ModelStore(tmp_path / "store")
    data = DatasetConfig(source="idx", path="/data/mnist", name="mnist")
    plan = TrainPlan(data=data, subset=100, seed=1)
    assert checkpoint_path(store, "mnist", plan).name == "mnist-8c8fc61e9f3b613c.pt"
    cosine = checkpoint_path(store, "mnist", replace(plan, decoder_schedule="cosine"))
    assert cosine.name != "mnist-8c8fc61e9f3b613c.pt"


def test_training_resumes_from_its_checkpoint_and_keeps_labels(tmp_path):
    store = ModelStore(tmp_path / "store")
    plan = tiny_plan(dataset_config_for(str(write_npz(tmp_path / "shapes.npz"))), subset=32)
    epochs: list[int] = []

    def stop_after_first(record, report):
        epochs.append(report.epoch)
        assert report.n_images == 32 and report.epochs == 3 and report.loss > 0
        return report.epoch < 1

    assert train_into_store(store, "shapes", plan, fit=None, callback=stop_after_first) is None
    assert checkpoint_path(store, "shapes", plan).is_file()
    assert store.catalog.models() == []
    record = train_into_store(
        store, "shapes", plan, fit=None, callback=lambda r, p: epochs.append(p.epoch)
    )
    assert epochs == [1, 2, 3]  # the second run starts at epoch 2: resumed, not restarted
    assert record is not None and (record.n_latents, record.dim) == (32, 8)
    assert not checkpoint_path(store, "shapes", plan).exists()
    bundle = load_bundle(store.bundle_dir("shapes"))
    assert bundle.labels is not None and bundle.labels.shape == (32,)
    assert set(bundle.labels.tolist()) <= {0, 1, 2, 3}


def test_a_checkpoint_resumes_under_the_recipe_it_started_with(tmp_path):
    plan = tiny_plan(dataset_config_for(str(write_npz(tmp_path / "shapes.npz"))), subset=32)
    data = load_plan_data(plan)
    model, recipe = plan.resolve(data.image_shape)
    before = replace(recipe, batch_size=8, progress=False)  # as if the defaults changed since
    ckpt = tmp_path / "run.pt"
    train_autoencoder(data, model, before, checkpoint=ckpt, callback=lambda r: False)
    _, resumed = train_plan(plan, data, tmp_path / "bundle", checkpoint=ckpt)
    reference = train_autoencoder(data, model, before)
    assert [r.loss for r in resumed.metrics.history] == [r.loss for r in reference.metrics.history]
    np.testing.assert_array_equal(resumed.latents, reference.latents)
    with pytest.raises(ValueError, match="started with epochs 2, this run asks for 3"):
        train_plan(replace(plan, epochs=3), data, tmp_path / "other", checkpoint=ckpt)


def test_conv_plans_train_on_every_core_unless_told(tmp_path):
    plan = TrainPlan(data=DatasetConfig())
    assert plan.resolve((1, 28, 28))[1].threads == available_cores()
    assert replace(plan, threads=1).resolve((1, 28, 28))[1].threads == 1
    assert plan.resolve((1, 8, 8))[1].threads is None  # small models: the caller's count


def test_architectures_over_the_bundle_limit_are_refused_before_training(tmp_path):
    big = ImageDataset(images=np.zeros((2, 3, 128, 128), np.float32), labels=None, name="big")
    with pytest.raises(ValueError, match=r"269,436,201 parameters, over the limit"):
        train_plan(TrainPlan(data=DatasetConfig()), big, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_image_folder_classes_become_labels_named_by_their_folders(tmp_path):
    store = ModelStore(tmp_path / "store")
    config = dataset_config_for(
        str(write_folder(tmp_path / "pets")), DataOptions(image_size=(8, 8))
    )
    record = train_into_store(store, "pets", tiny_plan(config), fit=None)
    assert record is not None and record.n_latents == 12
    bundle = load_bundle(store.bundle_dir("pets"))
    assert bundle.labels is not None and bundle.labels.tolist() == [0] * 6 + [1] * 6
    assert bundle.config.class_names == ("cats", "dogs")


def test_dataset_names_stay_inside_the_data_root(tmp_path):
    root = tmp_path / "data"
    write_idx(root / "mnist")
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert resolve_dataset(root, "mnist") == (root / "mnist").resolve()
    for bad, message in (
        ("../secret", "without '..'"),
        ("/etc", "without '..'"),
        ("escape", "leads out of the data root"),
        ("kmnist", "not found under the data root"),
    ):
        with pytest.raises(ValueError, match=message) as info:
            resolve_dataset(root, bad)
        assert str(tmp_path) not in str(info.value)  # no server paths in messages


def test_names_from_datasets_are_valid_model_names():
    assert sanitise_name("Fashion MNIST") == "fashion-mnist"
    assert sanitise_name("__x__") == "x"
    assert sanitise_name("Ünïcode") == "n-code"
    assert sanitise_name("...") == "model"


def test_api_train_job_runs_in_the_worker_with_progress(tmp_path):
    root = tmp_path / "data"
    write_idx(root / "tiny-idx", n=48)
    settings = make_settings(tmp_path / "store", data_root=root, target_l1=0.3)
    store = ModelStore(settings.store)
    names = ["zero", "one", "two"]
    body = {
        "dataset": "tiny-idx",
        "epochs": 2,
        "decoder_epochs": 1,
        "decoder_schedule": "cosine",
        "latent_dim": 2,
        "class_names": names,
    }
    with TestClient(create_app(settings, store=store, poll=False)) as client:
        assert client.post("/models/t/train", json=body).status_code == 401
        bad = client.post("/models/t/train", json={**body, "decoder_schedule": "step"}, headers=KEY)
        assert bad.status_code == 422 and "decoder_schedule" in bad.text
        accepted = client.post("/models/t/train", json=body, headers=KEY)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert (job["kind"], job["status"], job["model"], job["dataset"]) == (
            "train",
            "queued",
            "t",
            "tiny-idx",
        )
        again = client.post("/models/t/train", json=body, headers=KEY)
        assert again.status_code == 409 and "being trained" in again.json()["detail"]
        listed = client.get("/models").json()
        assert [j["model"] for j in listed["jobs"]] == ["t"]
        for bad in ("../x", "/etc"):
            refused = client.post("/models/u/train", json={"dataset": bad}, headers=KEY)
            assert refused.status_code == 422 and "relative to the data root" in refused.text
        Worker(store, settings).run(idle_exit=True)  # trains, registers, then fits
        jobs = {j.kind: j for j in store.queue.jobs("t")}
        assert jobs["train"].status == "done" and jobs["fit"].status == "done"
        plan = jobs["train"].train_plan
        assert plan is not None and plan.decoder_schedule == "cosine"
        progress = jobs["train"].train_progress
        assert progress is not None and (progress.epoch, progress.epochs) == (3, 3)
        assert progress.phase == "decoder" and progress.n_images == 48
        status = client.get("/models/t").json()
        assert status["classes"] and status["class_names"] == [names[c] for c in status["classes"]]
        assert (status["n_latents"], status["dim"], status["published_version"] >= 1) == (
            48,
            2,
            True,
        )
        taken = client.post("/models/t/train", json=body, headers=KEY)
        assert taken.status_code == 409 and "already exists" in taken.json()["detail"]


def test_api_training_needs_a_data_root(tmp_path):
    settings = make_settings(tmp_path / "store")
    with TestClient(create_app(settings, poll=False)) as client:
        r = client.post("/models/t/train", json={"dataset": "mnist"}, headers=KEY)
    assert r.status_code == 403 and "AEOT_DATA_ROOT" in r.json()["detail"]


def test_delete_while_training_cancels_it_with_202(tmp_path):
    root = tmp_path / "data"
    write_idx(root / "tiny-idx", n=48)
    settings = make_settings(tmp_path / "store", data_root=root)
    store = ModelStore(settings.store)
    body = {"dataset": "tiny-idx", "epochs": 3, "decoder_epochs": 1, "latent_dim": 2}
    with TestClient(create_app(settings, store=store, poll=False)) as client:
        assert client.post("/models/t/train", json=body, headers=KEY).status_code == 202
        job = store.queue.claim("w:1", 30.0)  # a worker runs it
        assert job is not None and job.kind == "train"
        deleted = client.delete("/models/t", headers=KEY)
        assert deleted.status_code == 202, deleted.text
        assert (deleted.json()["id"], deleted.json()["status"]) == (job.id, "cancelled")
        assert deleted.json()["reason"] == "deleted"
        # The worker finds out at its first epoch: it stops, registers nothing and removes
        # the epoch checkpoint it wrote.
        assert run_train_job(store, job, "w:1", threading.Event()) == ("cancelled", "cancelled")
        assert store.catalog.models() == [] and list((store.root / "training").iterdir()) == []
        assert client.get("/models/t").status_code == 404
        assert client.delete("/models/t", headers=KEY).status_code == 404
        assert client.post("/models/t/train", json=body, headers=KEY).status_code == 202


def test_training_cancelled_as_it_ends_never_registers(tmp_path):
    settings = make_settings(tmp_path / "store")
    store = ModelStore(settings.store)
    job = store.enqueue_train("t")
    store.delete("t")
    bundle = write_bundle(tmp_path / "bundle", n=30, d=2)
    with pytest.raises(TrainingCancelled):
        store.register("t", bundle, job_id=job.id)
    assert store.catalog.models() == [] and not store.model_dir("t").exists()
