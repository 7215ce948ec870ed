"""The model store: one directory per model bundle plus the SQLite catalogue.

Layout (``root`` is ``Settings.store``)::

    catalog.sqlite3                     models, potentials, jobs (service.catalog)
    models/<name>/bundle/               the model bundle (models.load_bundle)
    models/<name>/jobs/<id>.npz         fit checkpoints (solver.save_state)
    models/<name>/potentials/<f>.npz    published potentials (solver.Potential.save)
    staging/                            uploads and trainings being assembled
    training/<name>-<plan>.pt           per-epoch checkpoints of trainings (service.training)
    trash/                              deleted model directories awaiting removal

Every file is written to a temporary name and renamed into place (bundles as whole directories),
and the catalogue row that makes a file visible is written after the file, in one transaction;
a crash at any moment leaves the store readable (at worst an unreferenced file or directory).
The store is the only door to the catalogue: the worker, the routes and the CLI call its methods.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from models import Bundle, TrainPlan, load_bundle
from service.archive import ArchiveError, UploadLimits, extract_archive
from service.catalog import (
    Catalog,
    JobKind,
    JobRecord,
    JobStatus,
    ModelRecord,
    PotentialRecord,
    Progress,
    TrainProgress,
)
from service.job_config import JobConfig, train_config
from service.names import NAME_PATTERN, is_valid_name
from solver import FitState, Potential, load_state, save_state

log = logging.getLogger("aeot.store")

# Fits of one bundle queued at most (the first and two retries after failures).
FIT_ATTEMPTS = 3


class StoreError(ValueError):
    """A request the store cannot honour (bad name, bad bundle); the message says why."""


class CatalogueLost(RuntimeError):
    """The catalogue is missing, empty or unreadable while the store holds models."""


class UnknownModel(KeyError):
    """No model of that name in the store."""


class ModelExists(StoreError):
    """A model of that name is already registered."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`StoreError`."""
    if not is_valid_name(name):
        raise StoreError(
            f"model name {name!r} must match {NAME_PATTERN} (lowercase letters, digits, _ -)"
        )
    return name


class ModelStore:
    """Files and catalogue of the service (see the module docstring for the layout).

    Args:
        root: store directory, created when missing.
        limits: limits on registered bundles (uploads and directories alike).

    """

    def __init__(self, root: Path | str, *, limits: UploadLimits | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or UploadLimits()
        # A store on a read-only filesystem (or directory) is served read-only: writes 507.
        self.read_only = self.root.is_dir() and not os.access(self.root, os.W_OK)
        if not self.read_only:
            for sub in ("models", "staging", "trash", "training"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._catalog = _open_catalog(self.root, self.read_only)
        if not self.read_only:
            self._empty_trash()

    # Paths ------------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        """Directory of model ``name``."""
        return self.root / "models" / check_name(name)

    def bundle_dir(self, name: str) -> Path:
        """Bundle directory of model ``name``."""
        return self.model_dir(name) / "bundle"

    def checkpoint_path(self, job: JobRecord) -> Path:
        """Checkpoint file of a fit job."""
        return self.model_dir(job.model) / "jobs" / f"{job.id}.npz"

    def staging_dir(self) -> Path:
        """Make a fresh directory on the store's filesystem for assembling a bundle."""
        return Path(tempfile.mkdtemp(dir=self.root / "staging"))

    # Models -----------------------------------------------------------------------------
    def models(self) -> list[ModelRecord]:
        """List registered models, oldest first."""
        return self._catalog.models()

    def model(self, name: str) -> ModelRecord:
        """Return the model called ``name``; raises :class:`UnknownModel`."""
        record = self._catalog.model(name)
        if record is None:
            raise UnknownModel(name)
        return record

    def load_bundle(self, name: str, device: str = "cpu") -> Bundle:
        """Load model ``name``'s bundle (decoder on ``device``)."""
        self.model(name)
        return load_bundle(self.bundle_dir(name), device=device)

    def register(
        self,
        name: str,
        source: Path,
        *,
        move: bool = False,
        fit: JobConfig | None = None,
        limits: UploadLimits | None = None,
    ) -> ModelRecord:
        """Register a bundle directory as model ``name`` (and queue its OT fit).

        Args:
            name: model name (see :data:`NAME_PATTERN`).
            source: a bundle directory; validated with :func:`models.load_bundle`.
            move: move ``source`` (on the store's filesystem) instead of copying it.
            fit: queue a fit job with this config now (otherwise a worker queues one with
                its own settings when it next looks for missing potentials).
            limits: limits on the bundle (default: the store's).

        Raises:
            StoreError: invalid name or bundle. ModelExists: the name is taken.

        """
        check_name(name)
        if self._catalog.model(name) is not None:
            raise ModelExists(f"model {name!r} already exists; delete it first")
        try:
            max_parameters = (limits or self.limits).max_parameters
            bundle = load_bundle(source, max_parameters=max_parameters)
        except ValueError as exc:
            # Name files inside the bundle, never the server's directories.
            message = str(exc).replace(f"{Path(source)}/", "").replace(str(source), "bundle")
            raise StoreError(f"not a valid model bundle: {message}") from None
        digest = _file_hash(Path(source) / "latents.npy")
        staged = Path(source) if move else self._copy_to_staging(Path(source))
        target = self.model_dir(name)
        if target.exists():  # leftover of a crash between rename and catalogue row
            self._to_trash(target)
        target.mkdir(parents=True)
        staged.rename(target / "bundle")
        if not move:
            staged.parent.rmdir()  # the empty temporary directory of the copy
        n, d = bundle.latents.shape
        try:
            record = self._catalog.add_model(name, digest, int(n), int(d))
        except Exception:
            self._to_trash(target)
            raise
        if fit is not None:
            self._catalog.enqueue(name, "fit", fit, digest)
        return record

    def register_archive(
        self,
        name: str,
        data: bytes,
        fit: JobConfig | None = None,
        limits: UploadLimits | None = None,
    ) -> ModelRecord:
        """Register a bundle uploaded as a ``.tar``/``.tar.gz`` or ``.zip`` archive.

        The archive holds the bundle files at its top level or inside one directory; it is
        checked against ``limits`` (default: the store's) from its headers before anything is
        written (:mod:`service.archive`).
        """
        check_name(name)
        limits = limits or self.limits
        staged = self.staging_dir()
        try:
            try:
                extract_archive(data, staged, limits)
            except ArchiveError as exc:
                raise StoreError(str(exc)) from None
            root = _single_root(staged)
            record = self.register(name, root, move=True, fit=fit, limits=limits)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return record

    def delete(self, name: str) -> None:
        """Delete model ``name``: catalogue rows first, then its directory."""
        if not self._catalog.delete_model(check_name(name)):
            raise UnknownModel(name)
        target = self.model_dir(name)
        if target.exists():
            self._to_trash(target)
            self._empty_trash()

    # Jobs -------------------------------------------------------------------------------
    def enqueue_fit(
        self, name: str, config: JobConfig, *, replace: bool = False
    ) -> JobRecord | None:
        """Queue a fit of model ``name``; ``None`` when one is active and not ``replace``."""
        model = self.model(name)
        return self._catalog.enqueue(name, "fit", config, model.bundle_hash, replace=replace)

    def enqueue_train(
        self,
        name: str,
        seed: int = 0,
        *,
        plan: TrainPlan | None = None,
        fit: JobConfig | None = None,
    ) -> JobRecord | None:
        """Queue a training under ``name``: ``plan`` (default: the digits model), then ``fit``.

        Returns ``None`` when a train job is already active for ``name``.
        """
        check_name(name)
        config = fit if fit is not None else train_config(seed)
        return self._catalog.enqueue(name, "train", config, None, train_plan=plan)

    def ensure_fit_jobs(self, config: JobConfig) -> list[JobRecord]:
        """Queue a fit for every model whose potential is missing or stale (other bundle).

        A fit that failed is queued again, ``FIT_ATTEMPTS`` times at most per bundle.
        """
        queued = []
        for model in self.models():
            current = self._catalog.potential(model.name)
            if current is not None and current.bundle_hash == model.bundle_hash:
                continue
            counts = self._catalog.job_counts(model.name, "fit", model.bundle_hash)
            if any(counts.get(s, 0) for s in ("queued", "running", "done")):
                continue
            if counts.get("failed", 0) >= FIT_ATTEMPTS:
                continue
            job = self._catalog.enqueue(model.name, "fit", config, model.bundle_hash)
            if job is not None:
                queued.append(job)
        return queued

    def jobs(self, name: str | None = None, limit: int = 20) -> list[JobRecord]:
        """Newest jobs first (of one model or all)."""
        return self._catalog.jobs(name, limit)

    def active_job(self, name: str, kind: JobKind = "fit") -> JobRecord | None:
        """Return the newest job of model ``name`` (any status), or ``None``."""
        jobs = [j for j in self._catalog.jobs(name, limit=5) if j.kind == kind]
        return jobs[0] if jobs else None

    def retract(self, name: str, version: int, reason: str) -> int | None:
        """Withdraw a damaged current version; returns the version now current (see Catalog)."""
        return self._catalog.retract(name, version, reason)

    def damage(self, name: str) -> tuple[int, str] | None:
        """The newest retracted version of ``name`` newer than its current, and why."""
        return self._catalog.damage(name)

    def owns(self, job: JobRecord, worker: str) -> bool:
        """Whether ``worker`` holds the job's lease (runs it; nobody took it over)."""
        return self._catalog.owns(job.id, worker)

    def release_worker(self, worker: str, reason: str) -> int:
        """Queue again the running jobs of a worker known dead; returns how many."""
        return self._catalog.release_worker(worker, reason)

    def save_checkpoint(self, job: JobRecord, state: FitState) -> None:
        """Write a fit job's resumable state atomically, keeping the previous one beside it."""
        path = self.checkpoint_path(job)
        if path.exists():
            os.replace(path, _previous(path))
        save_state(path, state)

    def load_checkpoint(self, job: JobRecord) -> FitState | None:
        """Load the job's newest readable checkpoint, or ``None`` (none yet, or none readable).

        A damaged checkpoint (truncated, garbage, non-finite heights) is skipped for the
        previous one; the job's reason says so in ``/models`` and the log warns, so a fit that
        restarts from iteration 0 never does it silently.
        """
        path = self.checkpoint_path(job)
        damaged = []
        for candidate in (path, _previous(path)):
            if not candidate.exists():
                continue
            try:
                state = load_state(candidate)
                if not np.isfinite(state.heights).all():
                    raise ValueError("heights are not finite")
            except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as exc:
                log.warning("job %d: checkpoint %s is damaged: %s", job.id, candidate.name, exc)
                damaged.append(candidate.name)
                continue
            if damaged:
                self._catalog.note(
                    job.id, f"checkpoint damaged; resumed from the previous one ({candidate.name})"
                )
            return state
        if damaged:
            log.warning("job %d: no readable checkpoint; the fit restarts from iteration 0", job.id)
            self._catalog.note(job.id, "checkpoints damaged; restarted from iteration 0")
        return None

    def claim(self, worker: str, stale_seconds: float) -> JobRecord | None:
        """Take the oldest queued job, or a running one whose worker is gone; None if idle."""
        return self._catalog.claim(worker, stale_seconds)

    def job(self, job_id: int) -> JobRecord | None:
        """Return the job with this id, or ``None``."""
        return self._catalog.job(job_id)

    def has_job(self, name: str, kind: JobKind, bundle_hash: str | None) -> bool:
        """Whether a job of this kind (not cancelled) exists for the model's bundle."""
        return self._catalog.has_job(name, kind, bundle_hash)

    def heartbeat(self, job: JobRecord, worker: str, progress: Progress | None = None) -> bool:
        """Record a running job's progress; False when it is no longer ``worker``'s."""
        return self._catalog.heartbeat(job.id, worker, progress)

    def train_heartbeat(self, job: JobRecord, worker: str, progress: TrainProgress) -> bool:
        """Record a training job's epoch and loss; False when it is no longer ``worker``'s."""
        return self._catalog.train_heartbeat(job.id, worker, progress)

    def set_resumed(self, job: JobRecord, worker: str, iteration: int) -> bool:
        """Note that the job resumed from its checkpoint at ``iteration``."""
        return self._catalog.set_resumed(job.id, worker, iteration)

    def finish(
        self,
        job: JobRecord,
        worker: str,
        status: JobStatus,
        reason: str | None,
        error: str | None = None,
    ) -> bool:
        """Close a job (done, failed, cancelled) or hand it back to the queue (queued)."""
        return self._catalog.finish(job.id, worker, status, reason, error)

    # Potentials -------------------------------------------------------------------------
    def publish(self, job: JobRecord, potential: Potential, iteration: int) -> int | None:
        """Write a potential file, then make it the model's newest version.

        Returns:
            The new version number, or ``None`` if the model was deleted or its bundle
            replaced meanwhile (the file is then discarded).

        """
        if job.bundle_hash is None:
            raise StoreError(f"job {job.id} is not a fit job (no bundle hash); nothing to publish")
        path = self.model_dir(job.model) / "potentials" / f"job{job.id}-it{iteration}.npz"
        potential.save(path)
        try:  # verified as a reader will see it, before it can become current
            Potential.load(path)
        except (OSError, ValueError) as exc:
            path.unlink(missing_ok=True)
            raise StoreError(f"potential of job {job.id} failed verification: {exc}") from exc
        rel = str(path.relative_to(self.root))
        version = self._catalog.publish(
            job.model, rel, job.bundle_hash, job.id, iteration, potential.accuracy
        )
        if version is None:
            path.unlink(missing_ok=True)
        return version

    def potential_record(self, name: str, version: int | None = None) -> PotentialRecord | None:
        """Catalogue row of model ``name``'s published potential (or a version); or ``None``."""
        return self._catalog.potential(name, version)

    def published_versions(self) -> dict[str, int]:
        """``{model: published version}`` for every model (0: nothing published yet)."""
        return self._catalog.published_versions()

    def load_potential(self, record: PotentialRecord, *, backend: str = "auto") -> Potential:
        """Read the potential file of a catalogue row.

        Raises:
            solver.PotentialFormatError: the file is torn, foreign or of an unknown version.
            FileNotFoundError: the file is gone (model deleted meanwhile).

        """
        return Potential.load(self.root / record.path, backend=backend)

    def potential(
        self, name: str, version: int | None = None, *, backend: str = "auto"
    ) -> Potential | None:
        """Load model ``name``'s published potential (or a given version); ``None`` if none."""
        record = self.potential_record(name, version)
        return None if record is None else self.load_potential(record, backend=backend)

    # Internals --------------------------------------------------------------------------
    def _copy_to_staging(self, source: Path) -> Path:
        staged = self.staging_dir()
        target = staged / "bundle"
        shutil.copytree(source, target)
        return target

    def _to_trash(self, path: Path) -> None:
        dest = Path(tempfile.mkdtemp(dir=self.root / "trash"))
        path.rename(dest / path.name)

    def _empty_trash(self) -> None:
        for entry in (self.root / "trash").iterdir():
            shutil.rmtree(entry, ignore_errors=True)


def _open_catalog(root: Path, read_only: bool) -> Catalog:
    """Open the catalogue; never start a new one over models it has lost.

    Raises:
        CatalogueLost: the file is missing or empty while model directories exist, or it is
            not a readable catalogue at all (whatever the directories).

    """
    path = root / "catalog.sqlite3"
    models_dir = root / "models"
    models = (
        sorted(p.name for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    )
    size = path.stat().st_size if path.exists() else None
    if models and not size:
        what = "missing" if size is None else "empty (0 bytes)"
        raise CatalogueLost(_lost_message(path, what, models))
    try:
        return Catalog(path, read_only=read_only)
    except sqlite3.DatabaseError as exc:
        raise CatalogueLost(_lost_message(path, f"unreadable ({exc})", models)) from exc


def _lost_message(path: Path, what: str, models: list[str]) -> str:
    held = (
        f"{len(models)} model directories ({', '.join(models[:5])}) exist beside it; "
        if models
        else ""
    )
    return (
        f"the catalogue {path} is {what}; {held}refusing to start a new catalogue over them. "
        f"To recover, stop every server and worker on this store, then restore {path.name} "
        f"(and its -wal file) from a backup; or move the store aside and start with an "
        f"empty one (models re-registered from their bundle directories are fitted again)."
    )


def _previous(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``<id>.prev.npz``)."""
    return path.with_suffix(".prev.npz")


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _single_root(staged: Path) -> Path:
    """Find the bundle directory in an extracted archive (top level or one folder deep)."""
    if (staged / "config.json").exists():
        return staged
    entries = [p for p in staged.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise StoreError("archive must hold a bundle (config.json, latents.npy, ...) at its top")
