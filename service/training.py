"""Training jobs: an autoencoder trained on a dataset and registered in the store.

Three doors lead here. ``aeot train`` runs :func:`train_into_store` in the foreground with
progress bars; ``aeot serve --data DIR`` and ``POST /models/{name}/train`` queue a train job
(:func:`queue_training`) that the worker runs with :func:`run_train_job`, reporting epoch and
loss to the catalogue (shown in ``/models``). Either way the run checkpoints after every epoch
under ``<store>/training/`` and resumes from there when started again with the same plan; the
trained bundle is registered (labels kept) with a fit queued, which the worker then runs.

Over the API, datasets are names relative to the configured data root (``AEOT_DATA_ROOT``):
absolute paths, ``..`` and links leading out of the root are refused, and without a data root
the API trains nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from models import EpochRecord, ImageDataset, TrainPlan, load_plan_data, train_plan
from models.datasets import DatasetConfig, dataset_config_for
from models.options import DataOptions
from service.catalog import ModelRecord
from service.job_config import JobConfig
from service.jobs import JobRecord, JobStatus, TrainProgress
from service.lease import Lease
from service.store import ModelStore, TrainingCancelled, check_name

log = logging.getLogger("aeot.training")

# The embedded default: scikit-learn digits, all 1797 images, on one CPU thread.
_DIGITS_DATA = DatasetConfig(source="digits", split="all")

TrainCallback = Callable[[EpochRecord, TrainProgress], bool | None]


class DataRootError(Exception):
    """The server has no data root, so the API cannot train (403)."""


def digits_plan(seed: int = 0) -> TrainPlan:
    """The embedded default model's plan: MLP autoencoder on the 1797 digits, CPU, 1 thread."""
    return TrainPlan(data=_DIGITS_DATA, seed=seed, device="cpu", threads=1)


def resolve_dataset(data_root: Path | None, name: str) -> Path:
    """Resolve a dataset ``name`` sent over the API to a path inside ``data_root``.

    Raises:
        DataRootError: no data root is configured.
        ValueError: ``name`` is absolute, climbs with ``..``, leads out of the root through a
            link, or does not exist (messages name only ``name``, never server paths).

    """
    if data_root is None:
        raise DataRootError(
            "this server has no data root: start it with AEOT_DATA_ROOT (or --data-root) to "
            "train over the API"
        )
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise ValueError(f"dataset {name!r} must be a path relative to the data root, without '..'")
    root = data_root.resolve()
    path = (root / pure).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"dataset {name!r} leads out of the data root")
    if not path.exists():
        raise ValueError(f"dataset {name!r} not found under the data root")
    return path


def api_dataset(data_root: Path | None, name: str, options: DataOptions) -> DatasetConfig:
    """The :class:`DatasetConfig` of a dataset named over the API (see :func:`resolve_dataset`)."""
    path = resolve_dataset(data_root, name)
    try:
        config = dataset_config_for(str(path), options, roots=())
    except ValueError as exc:  # re-worded: the loader's message carries the server path
        raise ValueError(
            f"dataset {name!r} is not an IDX directory, .npy/.npz file or image folder"
        ) from exc
    return config


# TrainPlan fields added after checkpoints were first named (see checkpoint_path).
_LATER_OPTIONS = ("decoder_schedule",)


def checkpoint_path(store: ModelStore, name: str, plan: TrainPlan) -> Path:
    """Per-epoch checkpoint of training ``plan`` as model ``name`` (one file per plan).

    The device and thread count stay out of the name: a run may resume on another device;
    so do the class names, which do not change what is trained. Options added since the first
    release stay out of it while unset, so a run started before they existed keeps its
    checkpoint.
    """
    fields = {
        k: v
        for k, v in plan.to_dict().items()
        if k not in ("device", "threads") and not (k in _LATER_OPTIONS and v is None)
    }
    fields["data"] = {k: v for k, v in fields["data"].items() if k != "class_names"}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return store.root / "training" / f"{check_name(name)}-{digest[:16]}.pt"


def queue_training(
    store: ModelStore, name: str, plan: TrainPlan, fit: JobConfig
) -> JobRecord | None:
    """Queue a train job (``None`` when one is already active for ``name``).

    Raises:
        ModelExists: a model called ``name`` is registered (delete it first).

    """
    store.check_free(name)
    return store.enqueue_train(name, seed=plan.seed, plan=plan, fit=fit)


def train_into_store(
    store: ModelStore,
    name: str,
    plan: TrainPlan,
    *,
    fit: JobConfig | None,
    data: ImageDataset | None = None,
    callback: TrainCallback | None = None,
    progress: bool = False,
    job_id: int | None = None,
) -> ModelRecord | None:
    """Train ``plan`` (resuming its checkpoint) and register the bundle as ``name``.

    Args:
        store: the model store.
        name: model name; must be free.
        plan: what to train.
        fit: the fit queued with the registration (``None``: the worker queues its own).
        data: the plan's images when the caller loaded them already.
        callback: after each epoch, with the epoch record and the job-level progress;
            returning ``False`` stops training (the checkpoint stays for a resume).
        progress: tqdm bars over each epoch's batches.
        job_id: the train job running this (the worker's): the bundle is registered only
            while that job still runs.

    Returns:
        The registered model, or ``None`` when the callback stopped training.

    Raises:
        TrainingCancelled: ``job_id`` was cancelled (its name deleted) as training ended.

    """
    store.check_free(name)
    data = load_plan_data(plan) if data is None else data
    _, config = plan.resolve(data.image_shape)
    epochs = config.max_joint_epochs + config.decoder_epochs
    started = time.perf_counter()

    def on_epoch(record: EpochRecord) -> bool | None:
        report = TrainProgress(
            epoch=record.epoch,
            epochs=epochs,
            phase=record.phase,
            loss=record.loss,
            n_images=len(data),
            elapsed=time.perf_counter() - started,
        )
        return None if callback is None else callback(record, report)

    checkpoint = checkpoint_path(store, name, plan)
    out = store.staging_dir() / "bundle"
    bundle, _ = train_plan(
        plan, data, out, checkpoint=checkpoint, callback=on_epoch, progress=progress
    )
    if bundle is None:
        return None
    try:
        record = store.register(name, out, move=True, fit=fit, job_id=job_id)
    finally:
        checkpoint.unlink(missing_ok=True)
    return record


def run_train_job(
    store: ModelStore, job: JobRecord, worker: str, stop: threading.Event, interval: float = 5.0
) -> tuple[JobStatus, str]:
    """Run a claimed train job: train, register, queue its fit; epoch and loss to the catalogue.

    The job's lease is kept from a thread every ``interval`` seconds (an epoch can take
    minutes); each epoch's progress is written as it ends.

    Returns:
        ``("done", "trained")``; ``("queued", "worker stopped")`` when ``stop`` was set (the
        next run resumes from the epoch checkpoint); ``("cancelled", ...)`` when the job was
        taken away meanwhile.

    """
    plan = job.train_plan or digits_plan(job.config.seed)

    def on_epoch(record: EpochRecord, report: TrainProgress) -> bool:
        log.info(
            "training %s: epoch %d/%d (%s) loss %.5f",
            job.model,
            report.epoch,
            report.epochs,
            record.phase,
            record.loss,
        )
        if not store.queue.train_heartbeat(job.id, worker, report):
            lease.lost.set()
        return not (lease.lost.is_set() or stop.is_set())

    with Lease(store.queue, job, worker, interval) as lease:
        try:
            record = train_into_store(
                store, job.model, plan, fit=job.config, callback=on_epoch, job_id=job.id
            )
        except TrainingCancelled:
            record = None
            lease.lost.set()
    if lease.lost.is_set():
        # Cancelled (its name deleted): the epoch checkpoint written since is no one's.
        checkpoint_path(store, job.model, plan).unlink(missing_ok=True)
        return "cancelled", "cancelled"
    if record is None:
        return "queued", "worker stopped"
    return "done", "trained"
