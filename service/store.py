"""The model store: one directory per model bundle plus the SQLite catalogue.

Layout (``root`` is ``Settings.store``)::

    catalog.sqlite3                     models, potentials, jobs (service.catalog)
    catalog.lock                        held while the catalogue is checked and rebuilt
    catalog-old/<time>/                 catalogues set aside by a rebuild (newest few kept)
    models/<name>/model.json            name, bundle hash and registration time
    models/<name>/bundle/               the model bundle (models.load_bundle)
    models/<name>/jobs/<id>.npz         fit checkpoints (solver.save_state)
    models/<name>/potentials/v<version>-job<id>-it<iteration>.npz
                                        published potentials (solver.Potential.save)
    staging/<host>-<pid>-<random>/      uploads and trainings being assembled
    training/<name>-<plan>.pt           per-epoch checkpoints of trainings (service.training)
    trash/                              deleted model directories awaiting removal
    reserve                             space the worker frees to record a full disk

Every file is written to a temporary name and renamed into place (bundles as whole directories),
and the catalogue row that makes a file visible is written after the file, in one transaction;
a crash at any moment leaves the store readable (at worst an unreferenced file or directory).
The store opens the catalogue (:attr:`ModelStore.catalog`: models and potentials) and the job
queue in it (:attr:`ModelStore.queue`), and heals them; readers and the worker use both directly,
and the store's own methods are the operations that touch files as well as rows.

The model directories hold everything the catalogue says about models and potentials, so a
catalogue found missing, empty or corrupt (at open, or by any operation later) is rebuilt from
them (:meth:`ModelStore.heal`): the same models, the same version numbers, each model's newest
potential that reads as current; the job history is lost (the damaged file is kept aside).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models import Bundle, TrainPlan, load_bundle
from service.archive import ArchiveError, UploadLimits, extract_archive
from service.catalog import (
    CATALOG_FILE,
    SIDE_FILES,
    Catalog,
    CatalogueDamaged,
    FoundModel,
    FoundPotential,
    ModelRecord,
    PotentialRecord,
    write_rebuilt,
)
from service.job_config import JobConfig, train_config
from service.jobs import JobQueue, JobRecord, _alive
from service.names import NAME_PATTERN, is_valid_name
from solver import FitState, Potential, atomic_write_bytes, load_state, save_state

log = logging.getLogger("aeot.store")

# Fits of one bundle queued at most (the first and two retries after failures).
FIT_ATTEMPTS = 3
# A published potential's file name (``v<version>-`` since versions are part of the name).
_POTENTIAL_RE = re.compile(r"^(?:v(\d+)-)?job(\d+)-it(\d+)\.npz$")
_CHECKPOINT_RE = re.compile(r"^(\d+)(?:\.prev)?\.npz$")
# The store's directories besides the catalogue (see the module docstring).
_SUBDIRS = ("models", "staging", "trash", "training")
# Catalogues set aside by rebuilds that are kept (older ones are removed).
_KEEP_OLD_CATALOGUES = 5
# Staging entries without a live owner on this host are removed at once; those of another
# host (a store shared over the network) or of an older release after this many seconds.
_FOREIGN_STAGING_AGE = 7 * 24 * 3600.0
_LEGACY_STAGING_AGE = 3600.0
# Seconds between health checks of a catalogue nobody has found damaged (a quick_check).
CHECK_EVERY = 5.0
# What reading a damaged potential or checkpoint file (torn, garbage, missing) raises.
UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
# The reserve (see the layout): a worker that finds the disk full deletes it, so the catalogue
# can still take the few pages that hand its job back and say why; it is written again before
# the next job is claimed, which is how the worker learns that space has returned.
RESERVE_FILE = "reserve"
_RESERVE_BYTES = 1 << 20
_STORAGE_ERRNOS = {
    errno.ENOSPC: "the store's disk is full",
    errno.EDQUOT: "the store's disk quota is exhausted",
    errno.EROFS: "the store is read-only",
}


class StoreError(ValueError):
    """A request the store cannot honour (bad name, bad bundle); the message says why."""


class CatalogueLost(RuntimeError):
    """The catalogue cannot be read and cannot be rebuilt here (read-only store, not a store)."""


class TrainingCancelled(StoreError):
    """The training that made a bundle was cancelled (its model deleted) before it registered."""


class UnknownModel(KeyError):
    """No model of that name in the store."""


class ModelExists(StoreError):
    """A model of that name is already registered."""


@dataclass(frozen=True, kw_only=True)
class Deletion:
    """What ``DELETE`` of a name did.

    Attributes:
        deleted: a registered model of that name was deleted.
        cancelled: its jobs that were queued or running and are now cancelled (a name being
            trained has these and no model yet).

    """

    deleted: bool
    cancelled: list[JobRecord] = field(default_factory=list)


def storage_problem(exc: BaseException) -> str | None:
    """Say why a write failed when the store cannot take writes (full, read-only), else None."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[exc.errno]
    if isinstance(exc, sqlite3.OperationalError):
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc).lower()
        if name == "SQLITE_FULL" or "disk is full" in text:
            return _STORAGE_ERRNOS[errno.ENOSPC]
        if name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
            return _STORAGE_ERRNOS[errno.EROFS]
    return None


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
        self.read_only = _read_only(self.root)
        # What is wrong with the catalogue while it is (``None``: nothing known), and the last
        # rebuild (``ready`` and ``/models`` report both).
        self.catalogue_problem: str | None = None
        self.last_rebuild: dict[str, Any] | None = None
        self._heal_lock = threading.Lock()
        self._last_check = time.monotonic()
        self._heal_error: str | None = None
        is_store = (self.root / "models").is_dir()
        if not self.read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        # Nothing else is created before the catalogue opens: a refused directory stays as is.
        # Both stay the same objects for the store's life (a rebuild reopens the file), so the
        # worker, the routes and the serving index hold them directly.
        self.catalog = self._open_catalog(is_store)
        self.queue = JobQueue(self.catalog)
        if not self.read_only:
            for sub in _SUBDIRS:
                (self.root / sub).mkdir(exist_ok=True)
            self._empty_trash()
            self.sweep_staging()

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

    def release_reserve(self) -> None:
        """Free the reserve's space (the disk is full) so the catalogue can take a last write."""
        (self.root / RESERVE_FILE).unlink(missing_ok=True)

    def restore_reserve(self) -> None:
        """Write the reserve where it is missing.

        Raises:
            OSError: there is no room for it (ENOSPC: the disk is still full), or the store
                takes no writes.

        """
        path = self.root / RESERVE_FILE
        if self.read_only or path.exists():
            return
        # Random bytes: a compressing filesystem would store zeros in next to nothing.
        atomic_write_bytes(path, os.urandom(_RESERVE_BYTES))

    def staging_dir(self) -> Path:
        """Make a fresh directory on the store's filesystem for assembling a bundle.

        Its name carries this process's host and pid, so :meth:`sweep_staging` removes it once
        this process is gone.
        """
        prefix = f"{socket.gethostname()}-{os.getpid()}-"
        return Path(tempfile.mkdtemp(dir=self.root / "staging", prefix=prefix))

    def sweep_staging(self) -> list[str]:
        """Remove staging entries no live process owns; returns their names.

        Entries of a dead process on this host go at once; those of another host, or with no
        owner in their name (older releases), once they are old enough not to be in use.
        """
        staging = self.root / "staging"
        removed = []
        now = time.time()
        host = socket.gethostname()
        for entry in staging.iterdir() if staging.is_dir() else []:
            owner_host, _, rest = entry.name.rpartition("-")[0].rpartition("-")
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if rest.isdigit() and owner_host:
                stale = not _alive(int(rest)) if owner_host == host else age > _FOREIGN_STAGING_AGE
            else:
                stale = age > _LEGACY_STAGING_AGE
            if stale:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
        if removed:
            log.info("staging: removed %d leftover entries", len(removed))
        return removed

    # Models -----------------------------------------------------------------------------

    def model(self, name: str) -> ModelRecord:
        """Return the model called ``name``; raises :class:`UnknownModel`."""
        record = self.catalog.model(name)
        if record is None:
            raise UnknownModel(name)
        return record

    def check_free(self, name: str) -> None:
        """Raise :class:`StoreError` for an invalid name, :class:`ModelExists` for a taken one."""
        if self.catalog.model(check_name(name)) is not None:
            raise ModelExists(f"model {name!r} already exists; delete it first")

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
        job_id: int | None = None,
    ) -> ModelRecord:
        """Register a bundle directory as model ``name`` (and queue its OT fit).

        Args:
            name: model name (see :data:`NAME_PATTERN`).
            source: a bundle directory; validated with :func:`models.load_bundle`.
            move: move ``source`` (on the store's filesystem) instead of copying it.
            fit: queue a fit job with this config now (otherwise a worker queues one with
                its own settings when it next looks for missing potentials).
            limits: limits on the bundle (default: the store's).
            job_id: the training job that made the bundle: registered only while it is
                still running (checked with the catalogue row, in one transaction).

        Raises:
            StoreError: invalid name or bundle. ModelExists: the name is taken.
            TrainingCancelled: ``job_id`` was cancelled meanwhile (nothing is registered).

        """
        self.check_free(name)
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
        created = time.time()
        try:
            # What a rebuilt catalogue needs that the bundle does not say: when it was added.
            meta = {"name": name, "bundle_hash": digest, "created": created}
            atomic_write_bytes(target / "model.json", json.dumps(meta).encode())
            record = self.catalog.add_model(name, digest, int(n), int(d), created, job_id=job_id)
        except Exception:
            self._to_trash(target)
            raise
        if record is None:
            self._to_trash(target)
            self._empty_trash()
            raise TrainingCancelled(f"the training of {name!r} was cancelled; nothing registered")
        if fit is not None:
            self.queue.enqueue(name, "fit", fit, digest)
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

    def delete(self, name: str) -> Deletion:
        """Delete model ``name`` (catalogue rows first, then its directory) and cancel its jobs.

        A name that is only being trained has no model yet: its training is cancelled (the
        worker stops at its next epoch and registers nothing) and its training checkpoints
        removed.

        Raises:
            UnknownModel: neither a model nor an active job of that name.

        """
        existed, cancelled = self.catalog.delete_model(check_name(name))
        jobs = [j for j in (self.queue.job(i) for i in cancelled) if j is not None]
        if not existed and not jobs:
            raise UnknownModel(name)
        target = self.model_dir(name)
        if target.exists():
            self._to_trash(target)
            self._empty_trash()
        for checkpoint in (self.root / "training").glob(f"{name}-*.pt"):
            checkpoint.unlink(missing_ok=True)
        return Deletion(deleted=existed, cancelled=jobs)

    # Jobs -------------------------------------------------------------------------------
    def enqueue_fit(
        self, name: str, config: JobConfig, *, replace: bool = False
    ) -> JobRecord | None:
        """Queue a fit of model ``name``; ``None`` when one is active and not ``replace``."""
        model = self.model(name)
        return self.queue.enqueue(name, "fit", config, model.bundle_hash, replace=replace)

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
        return self.queue.enqueue(name, "train", config, None, train_plan=plan)

    def ensure_fit_jobs(self, config: JobConfig) -> list[JobRecord]:
        """Queue a fit for every model whose potential is missing, stale or withdrawn.

        Stale: fitted to another bundle. Withdrawn: a newer version was retracted as damaged.
        A fit that failed is queued again, ``FIT_ATTEMPTS`` times at most per bundle.
        """
        queued = []
        for model in self.catalog.models():
            current = self.catalog.potential(model.name)
            counts = self.queue.job_counts(model.name, "fit", model.bundle_hash)
            if current is not None and current.bundle_hash == model.bundle_hash:
                # Current, unless a newer version was withdrawn as damaged and no fit ran
                # since (a rebuilt catalogue records damage without queueing a refit).
                if not self.catalog.needs_repair(model.name):
                    continue
            elif any(counts.get(s, 0) for s in ("queued", "running", "done")):
                continue
            if counts.get("failed", 0) >= FIT_ATTEMPTS:
                continue
            job = self.queue.enqueue(model.name, "fit", config, model.bundle_hash)
            if job is not None:
                queued.append(job)
        return queued

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
            except (*UNREADABLE, TypeError) as exc:
                log.warning("job %d: checkpoint %s is damaged: %s", job.id, candidate.name, exc)
                damaged.append(candidate.name)
                continue
            if damaged:
                self.queue.note(
                    job.id, f"checkpoint damaged; resumed from the previous one ({candidate.name})"
                )
            return state
        if damaged:
            log.warning("job %d: no readable checkpoint; the fit restarts from iteration 0", job.id)
            self.queue.note(job.id, "checkpoints damaged; restarted from iteration 0")
        return None

    # Potentials -------------------------------------------------------------------------
    def publish(self, job: JobRecord, potential: Potential, iteration: int) -> int | None:
        """Write a potential file, then make it the model's newest version.

        Returns:
            The new version number, or ``None`` if the model was deleted or its bundle
            replaced meanwhile (the file is then discarded).

        """
        if job.bundle_hash is None:
            raise StoreError(f"job {job.id} is not a fit job (no bundle hash); nothing to publish")
        directory = self.model_dir(job.model) / "potentials"
        name = f"job{job.id}-it{iteration}.npz"
        pending = directory / f".{name}"  # hidden until it has a version: a rebuild skips it
        potential.save(pending)
        try:  # verified as a reader will see it, before it can become current
            Potential.load(pending)
        except (OSError, ValueError) as exc:
            pending.unlink(missing_ok=True)
            raise StoreError(f"potential of job {job.id} failed verification: {exc}") from exc
        placed: list[Path] = []

        def place(version: int) -> str:
            final = directory / f"v{version}-{name}"
            os.replace(pending, final)
            placed.append(final)
            return str(final.relative_to(self.root))

        try:
            version = self.catalog.publish(
                job.model, place, job.bundle_hash, job.id, iteration, potential.accuracy
            )
        except BaseException:
            for path in (pending, *placed):
                path.unlink(missing_ok=True)
            raise
        if version is None:
            pending.unlink(missing_ok=True)
        return version

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
        record = self.catalog.potential(name, version)
        return None if record is None else self.load_potential(record, backend=backend)

    # Housekeeping -----------------------------------------------------------------------
    def prune(self, *, keep_checkpoints: int, job_history: int) -> tuple[int, int]:
        """Remove checkpoints of finished fit jobs and finished job rows beyond what is kept.

        Checkpoints (``jobs/<id>.npz`` and ``<id>.prev.npz``) of queued and running jobs stay;
        of the others, the newest ``keep_checkpoints`` jobs' per model stay. Job rows: see
        :meth:`Catalog.prune_jobs`. Returns ``(checkpoint files, job rows)`` removed.
        """
        active = self.queue.active_job_ids()
        removed = 0
        for directory in (self.root / "models").iterdir():
            ids: dict[int, list[Path]] = {}
            for path in (directory / "jobs").glob("*.npz") if directory.is_dir() else []:
                match = _CHECKPOINT_RE.match(path.name)
                if match and int(match.group(1)) not in active:
                    ids.setdefault(int(match.group(1)), []).append(path)
            for job_id in sorted(ids, reverse=True)[keep_checkpoints:]:
                for path in ids[job_id]:
                    path.unlink(missing_ok=True)
                    removed += 1
        rows = self.queue.prune_jobs(job_history)
        if removed or rows:
            log.info("pruned %d checkpoint files and %d finished job rows", removed, rows)
        return removed, rows

    def refresh_mode(self) -> bool:
        """Re-read whether the store takes writes; returns True when that changed.

        A store that was served read-only and became writable (remounted) is opened for
        writing again, without a restart; one that became read-only is reported so.
        """
        now = _read_only(self.root)
        if now == self.read_only:
            return False
        with self._heal_lock:
            self.catalog.reopen(read_only=now)
            if not now:
                for sub in _SUBDIRS:
                    (self.root / sub).mkdir(exist_ok=True)
            self.read_only = now
        log.warning("store %s is %s now", self.root, "read-only" if now else "writable again")
        return True

    # Catalogue health -------------------------------------------------------------------
    def heal(self, *, force: bool = False) -> dict[str, Any] | None:
        """Check the catalogue and rebuild it from the model directories when it is damaged.

        Safe to call from any thread or process at any time: a lock file serialises rebuilds,
        and the check is made again under it, so a catalogue another process rebuilt a moment
        ago is left alone. ``force`` rebuilds a healthy catalogue too (job history is lost).

        Returns:
            The rebuild's record (``at``, ``why``, ``models``, ``skipped``, ``kept``), or
            ``None`` when the catalogue was healthy.

        Raises:
            CatalogueLost: the catalogue is damaged and the store is read-only.
            OSError: the new catalogue could not be written (disk full); the old one stays.

        """
        with self._heal_lock:
            if self.read_only:
                problem = self.catalog.check()
                self.catalogue_problem = None
                if problem is not None:
                    self._on_damage(problem)
                    raise CatalogueLost(
                        _lost_message(
                            self.root / CATALOG_FILE,
                            problem,
                            _model_dirs(self.root),
                            "the store is read-only, so it cannot be rebuilt here",
                        )
                    )
                return None
            with _locked(self.root / "catalog.lock"):
                problem = "rebuilt on request" if force else self.catalog.check()
                if problem is None:
                    self.catalogue_problem = None
                    return None
                record = self._rebuild(problem)
                self.catalog.reopen()
                return record

    def heal_if_due(self) -> dict[str, Any] | None:
        """:meth:`heal` when damage was seen, or every ``CHECK_EVERY`` seconds; else nothing.

        What the server's poller runs: damage nobody has met yet (a garbled page no query
        read) is found within ``CHECK_EVERY`` seconds.
        """
        now = time.monotonic()
        due = now - self._last_check >= CHECK_EVERY
        # Damage seen: at once; a rebuild that failed (no room): again every CHECK_EVERY.
        if not due and (self.catalogue_problem is None or self._heal_error is not None):
            return None
        self._last_check = now
        try:
            return self.heal()
        except CatalogueLost:
            return None  # read-only: reported (catalogue_problem), served from what is loaded
        except (OSError, sqlite3.DatabaseError, CatalogueDamaged) as exc:
            # No room for the new catalogue (full disk): the next round tries again.
            if self._heal_error != str(exc):
                log.error("the catalogue could not be rebuilt yet: %s", exc)
            self._heal_error = str(exc)
            return None

    def _on_damage(self, problem: str) -> None:
        said = f"the catalogue {CATALOG_FILE} is {problem}"
        if self.catalogue_problem != said:
            log.error("%s (store %s)", said, self.root)
        self.catalogue_problem = said

    def _open_catalog(self, is_store: bool) -> Catalog:
        """Open the catalogue, rebuilding it when it is damaged; never over a foreign file.

        Raises:
            CatalogueLost: the catalogue is damaged and cannot be rebuilt here: the store is
                read-only, or the directory holds no ``models/`` (not a store).

        """
        path = self.root / CATALOG_FILE
        models = _model_dirs(self.root)
        size = path.stat().st_size if path.exists() else None
        problem: str | None = None
        catalog = None
        if not size:
            if models:  # a new catalogue would silently drop these models
                problem = "missing" if size is None else "empty (0 bytes)"
        else:
            try:
                catalog = Catalog(path, read_only=self.read_only, on_damage=self._on_damage)
                problem = catalog.check()
            except CatalogueDamaged as exc:
                problem = str(exc)
            except sqlite3.DatabaseError as exc:  # a read-only file that is no catalogue
                problem = f"unreadable ({exc})"
        if problem is None:
            if catalog is None:
                if self.read_only and size is None:
                    raise CatalogueLost(
                        _lost_message(path, "missing", models, "the store is read-only")
                    )
                catalog = Catalog(path, read_only=self.read_only, on_damage=self._on_damage)
            return catalog
        if self.read_only or not is_store:
            why = "the store is read-only" if self.read_only else "this directory is no store"
            raise CatalogueLost(_lost_message(path, problem, models, f"{why}; not rebuilding"))
        with self._heal_lock, _locked(self.root / "catalog.lock"):
            # Another process may have rebuilt it while this one waited for the lock.
            if path.exists() and path.stat().st_size:
                with suppress(CatalogueDamaged):
                    again = Catalog(path, on_damage=self._on_damage)
                    if again.check() is None:
                        return again
            self._rebuild(problem)
        return Catalog(path, on_damage=self._on_damage)

    def _rebuild(self, problem: str) -> dict[str, Any]:
        """Write a catalogue from the model directories and swap it in (lock held).

        The caller opens the new file (:meth:`Catalog.reopen` of the store's catalogue).
        """
        path = self.root / CATALOG_FILE
        found, skipped, next_job = _scan(self.root)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (self.root / "catalog-old").mkdir(exist_ok=True)
        aside = Path(tempfile.mkdtemp(dir=self.root / "catalog-old", prefix=f"{stamp}-"))
        keep = path.exists() and path.stat().st_size > 0
        record: dict[str, Any] = {
            "at": time.time(),
            "why": problem,
            "models": [m.name for m in found],
            "potentials": sum(len(m.potentials) for m in found),
            "skipped": skipped,
            "kept": str(aside.relative_to(self.root)) if keep else None,
        }
        tmp = self.root / f".{CATALOG_FILE}.rebuild-{os.getpid()}-{threading.get_ident()}"
        for leftover in [tmp, *(Path(f"{tmp}{side}") for side in SIDE_FILES)]:
            leftover.unlink(missing_ok=True)
        try:
            write_rebuilt(tmp, found, next_job, record)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            # The old files go aside first: SQLite would apply a leftover -wal to the new file.
            for side in SIDE_FILES:
                side_path = Path(f"{path}{side}")
                if side_path.exists():
                    os.replace(side_path, aside / side_path.name)
            if keep:
                os.link(path, aside / path.name)  # the name stays taken until the replace
            os.replace(tmp, path)
            _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            with suppress(OSError):
                aside.rmdir()  # nothing was set aside
        self._prune_old_catalogues()
        self.catalogue_problem = None
        self._heal_error = None
        self.last_rebuild = record
        log.error(
            "the catalogue was %s: rebuilt from %d model directories (%s); %d potentials; "
            "job history lost%s%s",
            problem,
            len(found),
            ", ".join(record["models"]) or "none",
            record["potentials"],
            f"; skipped {'; '.join(skipped)}" if skipped else "",
            f"; the old file is in {record['kept']}" if keep else "",
        )
        return record

    def rebuilt(self) -> dict[str, Any] | None:
        """The record of the catalogue's last rebuild (from this process or the file), or None."""
        if self.last_rebuild is not None:
            return self.last_rebuild
        with suppress(CatalogueDamaged, sqlite3.DatabaseError):
            return self.catalog.get_meta("rebuilt")
        return None

    def _prune_old_catalogues(self) -> None:
        old = self.root / "catalog-old"
        entries = sorted(old.iterdir()) if old.is_dir() else []
        for entry in entries[:-_KEEP_OLD_CATALOGUES]:
            shutil.rmtree(entry, ignore_errors=True)

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


def _read_only(root: Path) -> bool:
    """Whether the store directory exists and cannot be written (read-only mount or mode)."""
    if not root.is_dir():
        return False
    with suppress(OSError):
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return True
    return not os.access(root, os.W_OK)


def _model_dirs(root: Path) -> list[str]:
    models = root / "models"
    return sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []


def _lost_message(path: Path, what: str, models: list[str], why: str) -> str:
    held = (
        f"{len(models)} model directories ({', '.join(models[:5])}) exist beside it; "
        if models
        else ""
    )
    return (
        f"the catalogue {path} is {what}; {held}{why}. To recover, rebuild it from the model "
        f"directories where the store is writable (`aeot store rebuild --store DIR`, or any "
        f"server or worker start), or restore {path.name} from a backup."
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created when missing) across processes."""
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(root: Path) -> tuple[list[FoundModel], list[str], int]:
    """What the model directories hold.

    Returns the models with their potentials, the directories skipped (with why), and the
    first job id that no checkpoint or potential file uses.
    """
    found, skipped = [], []
    next_job = 1
    for directory in sorted((root / "models").iterdir()) if (root / "models").is_dir() else []:
        if not directory.is_dir():
            continue
        name = directory.name
        if not is_valid_name(name):
            skipped.append(f"{name}: not a model name")
            continue
        latents = directory / "bundle" / "latents.npy"
        try:
            shape = np.load(latents, mmap_mode="r", allow_pickle=False).shape
            if len(shape) != 2:
                raise ValueError(f"latents.npy has shape {shape}, expected (N, d)")
            digest = _file_hash(latents)
        except (OSError, ValueError) as exc:
            skipped.append(f"{name}: bundle does not read ({type(exc).__name__}: {exc})")
            continue
        created = _registered_at(directory)
        potentials = _scan_potentials(root, directory)
        for checkpoint in (directory / "jobs").glob("*.npz"):
            match = _CHECKPOINT_RE.match(checkpoint.name)
            if match:
                next_job = max(next_job, int(match.group(1)) + 1)
        for potential in potentials:
            next_job = max(next_job, (potential.job_id or 0) + 1)
        found.append(
            FoundModel(
                name=name,
                bundle_hash=digest,
                n_latents=int(shape[0]),
                dim=int(shape[1]),
                created=created,
                potentials=tuple(potentials),
            )
        )
    return found, skipped, next_job


def _registered_at(directory: Path) -> float:
    """When a model was registered: its ``model.json``, else its bundle's time."""
    with suppress(OSError, ValueError, KeyError, TypeError):
        return float(json.loads((directory / "model.json").read_text())["created"])
    return (directory / "bundle").stat().st_mtime


def _scan_potentials(root: Path, directory: Path) -> list[FoundPotential]:
    """A model's potential files with their versions.

    The version is in the name; files named before it was are numbered in publication order
    (job, then iteration), as the catalogue numbered them.
    """
    entries = []
    for path in (directory / "potentials").glob("*.npz"):
        match = _POTENTIAL_RE.match(path.name)
        if match:
            version = int(match.group(1)) if match.group(1) else None
            entries.append((version, int(match.group(2)), int(match.group(3)), path))
    legacy = sorted((e for e in entries if e[0] is None), key=lambda e: (e[1], e[2]))
    numbered = [(k + 1, job, it, path) for k, (_, job, it, path) in enumerate(legacy)]
    numbered += [(int(v), job, it, path) for v, job, it, path in entries if v is not None]
    out = []
    for version, job, iteration, path in sorted(numbered, key=lambda e: e[0]):
        damaged, accuracy = None, None
        try:
            accuracy = Potential.read_accuracy(path)
        except (OSError, ValueError) as exc:
            damaged = f"unreadable when the catalogue was rebuilt ({exc})"
        out.append(
            FoundPotential(
                version=version,
                path=str(path.relative_to(root)),
                job_id=job,
                iteration=iteration,
                accuracy=accuracy,
                created=path.stat().st_mtime,
                damaged=damaged,
            )
        )
    return out


def _previous(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``<id>.prev.npz``)."""
    return path.with_suffix(".prev.npz")


def _file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _single_root(staged: Path) -> Path:
    """Find the bundle directory in an extracted archive (top level or one folder deep)."""
    if (staged / "config.json").exists():
        return staged
    entries = [p for p in staged.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise StoreError("archive must hold a bundle (config.json, latents.npy, ...) at its top")
