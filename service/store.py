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
import io
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from models import Bundle, TrainPlan, load_bundle
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
from solver import FitState, Potential, load_state, save_state

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


class StoreError(ValueError):
    """A request the store cannot honour (bad name, bad bundle); the message says why."""


class UnknownModel(KeyError):
    """No model of that name in the store."""


class ModelExists(StoreError):
    """A model of that name is already registered."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`StoreError`."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StoreError(
            f"model name {name!r} must match {NAME_PATTERN} (lowercase letters, digits, _ -)"
        )
    return name


class ModelStore:
    """Files and catalogue of the service (see the module docstring for the layout).

    Args:
        root: store directory, created when missing.

    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        for sub in ("models", "staging", "trash", "training"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._catalog = Catalog(self.root / "catalog.sqlite3")
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
        self, name: str, source: Path, *, move: bool = False, fit: JobConfig | None = None
    ) -> ModelRecord:
        """Register a bundle directory as model ``name`` (and queue its OT fit).

        Args:
            name: model name (see :data:`NAME_PATTERN`).
            source: a bundle directory; validated with :func:`models.load_bundle`.
            move: move ``source`` (on the store's filesystem) instead of copying it.
            fit: queue a fit job with this config now (otherwise a worker queues one with
                its own settings when it next looks for missing potentials).

        Raises:
            StoreError: invalid name or bundle. ModelExists: the name is taken.

        """
        check_name(name)
        if self._catalog.model(name) is not None:
            raise ModelExists(f"model {name!r} already exists; delete it first")
        try:
            bundle = load_bundle(source)
        except ValueError as exc:
            raise StoreError(f"not a valid model bundle: {exc}") from exc
        digest = _file_hash(Path(source) / "latents.npy")
        staged = Path(source) if move else self._copy_to_staging(Path(source))
        target = self.model_dir(name)
        if target.exists():  # leftover of a crash between rename and catalogue row
            self._to_trash(target)
        target.mkdir(parents=True)
        staged.rename(target / "bundle")
        n, d = bundle.latents.shape
        try:
            record = self._catalog.add_model(name, digest, int(n), int(d))
        except Exception:
            self._to_trash(target)
            raise
        if fit is not None:
            self._catalog.enqueue(name, "fit", fit, digest)
        return record

    def register_archive(self, name: str, data: bytes, fit: JobConfig | None = None) -> ModelRecord:
        """Register a bundle uploaded as a ``.tar``/``.tar.gz`` or ``.zip`` archive.

        The archive holds the bundle files at its top level or inside one directory.
        """
        check_name(name)
        staged = self.staging_dir()
        try:
            _extract(data, staged)
            root = _single_root(staged)
            record = self.register(name, root, move=True, fit=fit)
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
        """Queue a fit for every model whose potential is missing or stale (other bundle)."""
        queued = []
        for model in self.models():
            current = self._catalog.potential(model.name)
            if current is not None and current.bundle_hash == model.bundle_hash:
                continue
            if self._catalog.has_job(model.name, "fit", model.bundle_hash):
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

    def save_checkpoint(self, job: JobRecord, state: FitState) -> None:
        """Write a fit job's resumable state atomically."""
        save_state(self.checkpoint_path(job), state)

    def load_checkpoint(self, job: JobRecord) -> FitState | None:
        """Load the job's last checkpoint, or ``None`` (none yet, or unreadable)."""
        path = self.checkpoint_path(job)
        if not path.exists():
            return None
        try:
            return load_state(path)
        except ValueError:
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


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(data: bytes, dest: Path) -> None:
    """Unpack a tar or zip archive safely (no absolute paths, links or ``..``)."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                _check_member(info.filename)
            zf.extractall(dest)
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for member in tf.getmembers():
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise StoreError(f"archive member {member.name!r} is not a plain file")
            tf.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise StoreError(f"upload is not a tar or zip archive: {exc}") from exc


def _check_member(name: str) -> None:
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts:
        raise StoreError(f"archive member {name!r} escapes the bundle directory")


def _single_root(staged: Path) -> Path:
    """Find the bundle directory in an extracted archive (top level or one folder deep)."""
    if (staged / "config.json").exists():
        return staged
    entries = [p for p in staged.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise StoreError("archive must hold a bundle (config.json, latents.npy, ...) at its top")
