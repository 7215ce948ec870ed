"""The store's SQLite catalogue: models, published potentials and fit/train jobs.

One file (``catalog.sqlite3``) with a rollback journal: no file beside it between writes.
(SQLite's WAL mode keeps a ``-wal`` and a memory-mapped ``-shm`` file beside the database; a
``-shm`` truncated by anyone kills every process that has it mapped with SIGBUS, and a deleted
``-wal`` or ``-shm`` breaks every later connection, so the service does not use it.) Every write
is one ``BEGIN IMMEDIATE`` transaction: a crash leaves the previous consistent state. Jobs
double as the work queue: a worker claims the oldest queued job, or a running one whose worker
died (same host, dead pid) or stopped sending heartbeats, in one transaction, so several
workers can share a store.

A catalogue that is missing, empty or corrupt raises :class:`CatalogueDamaged` from every
operation (checked with :meth:`Catalog.check`, never guessed from one error); the store then
rebuilds it from its model directories (:func:`write_rebuilt`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from models import TrainPlan
from service.job_config import JobConfig
from solver import AccuracyReport

CATALOG_FILE = "catalog.sqlite3"
# SQLite's files beside the database: the rollback journal of a write in progress, and the WAL
# files an older release (or another tool) may have left.
SIDE_FILES = ("-journal", "-wal", "-shm")
JobKind = Literal["fit", "train"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    bundle_hash TEXT NOT NULL,
    n_latents INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    created REAL NOT NULL,
    published_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS potentials (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    bundle_hash TEXT NOT NULL,
    job_id INTEGER,
    iteration INTEGER NOT NULL,
    accuracy TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    bundle_hash TEXT,
    created REAL NOT NULL,
    started REAL,
    updated REAL,
    finished REAL,
    worker TEXT,
    heartbeat REAL,
    iteration INTEGER NOT NULL DEFAULT 0,
    elapsed REAL NOT NULL DEFAULT 0,
    train_l1 REAL,
    accuracy TEXT,
    eta REAL,
    checkpoint_iteration INTEGER,
    resumed_from INTEGER,
    reason TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id);
CREATE TABLE IF NOT EXISTS damaged (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_TABLES = ("models", "potentials", "jobs", "damaged")
# SQLite result codes that say nothing about the file's health (the caller's error stands).
_NOT_DAMAGE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_READONLY", "SQLITE_INTERRUPT")
# Columns added after the first release; a catalogue without them gets them on open (NULL).
_ADDED_JOB_COLUMNS = {"train_plan": "TEXT", "train_progress": "TEXT"}


@dataclass(frozen=True, kw_only=True)
class ModelRecord:
    """One registered model bundle."""

    name: str
    bundle_hash: str
    n_latents: int
    dim: int
    created: float
    published_version: int


@dataclass(frozen=True, kw_only=True)
class PotentialRecord:
    """One published potential (heights + extended map arrays) of a model."""

    model: str
    version: int
    path: str
    bundle_hash: str
    job_id: int | None
    iteration: int
    accuracy: AccuracyReport | None
    created: float


@dataclass(frozen=True, kw_only=True)
class TrainProgress:
    """Progress of a training job, written by the worker after each epoch.

    Attributes:
        epoch: epochs done (joint + decoder). epochs: planned epochs at most (the joint phase
            may end earlier on a plateau). phase: ``"joint"`` or ``"decoder"`` (of the last
            epoch). loss: that epoch's mean training L2 (MSE per pixel). n_images: training
            images. elapsed: seconds of training.

    """

    epoch: int
    epochs: int
    phase: str
    loss: float
    n_images: int
    elapsed: float


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """One fit or train job and its last reported progress."""

    id: int
    model: str
    kind: JobKind
    status: JobStatus
    config: JobConfig
    bundle_hash: str | None
    created: float
    started: float | None
    updated: float | None
    finished: float | None
    worker: str | None
    iteration: int
    elapsed: float
    train_l1: float | None
    accuracy: AccuracyReport | None
    eta: float | None
    checkpoint_iteration: int | None
    resumed_from: int | None
    reason: str | None
    error: str | None
    train_plan: TrainPlan | None = None
    train_progress: TrainProgress | None = None


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A progress report of a running fit, as the worker writes it with each heartbeat."""

    iteration: int
    elapsed: float
    train_l1: float | None = None
    accuracy: AccuracyReport | None = None
    eta: float | None = None
    checkpoint_iteration: int | None = None


class CatalogueDamaged(RuntimeError):
    """The catalogue file is missing, empty or corrupt; the message says which.

    Raised instead of the SQLite error by every catalogue operation once :meth:`Catalog.check`
    confirms the damage; the store rebuilds the file from its model directories.
    """


@dataclass(frozen=True, kw_only=True)
class FoundPotential:
    """A potential file found in a model directory, for a rebuilt catalogue.

    Attributes:
        version: its version (from its name, or its place in publication order).
        path: relative to the store. job_id, iteration: the job and iteration that wrote it.
        accuracy: the check stored in the file. created: the file's modification time.
        damaged: why the file does not read (``None``: it reads).

    """

    version: int
    path: str
    job_id: int | None
    iteration: int
    accuracy: AccuracyReport | None
    created: float
    damaged: str | None = None


@dataclass(frozen=True, kw_only=True)
class FoundModel:
    """A model directory found in the store, for a rebuilt catalogue."""

    name: str
    bundle_hash: str
    n_latents: int
    dim: int
    created: float
    potentials: tuple[FoundPotential, ...]


def worker_id() -> str:
    """``host:pid`` of this process: lets a worker on the same host detect a dead owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Catalog:
    """Typed access to the catalogue file; one short-lived connection per operation.

    Args:
        path: the SQLite file.
        read_only: open it for reading only (a store on a read-only filesystem); every write
            then fails with ``sqlite3.OperationalError`` (the API answers 507).
        on_damage: called with the reason when an operation finds the file damaged (before
            :class:`CatalogueDamaged` is raised), e.g. to schedule a rebuild.

    Raises:
        CatalogueDamaged: the file exists but is not a readable catalogue.

    """

    def __init__(
        self,
        path: Path,
        *,
        read_only: bool = False,
        on_damage: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.on_damage = on_damage
        mode = "ro" if read_only else "rw"
        self._uri = f"file:{quote(str(path))}?mode={mode}"
        if read_only:
            try:
                self._probe()
            except sqlite3.OperationalError:
                # A WAL database (older releases) on a read-only filesystem cannot create its
                # shared-memory file; a cleanly closed one has no WAL left: read it as immutable.
                self._uri = f"file:{quote(str(path))}?immutable=1"
                self._probe()
            return
        try:
            con = sqlite3.connect(f"file:{quote(str(path))}?mode=rwc", uri=True, timeout=30.0)
        except sqlite3.DatabaseError as exc:
            raise CatalogueDamaged(f"unreadable ({exc})") from exc
        try:
            con.isolation_level = None
            con.row_factory = sqlite3.Row
            _leave_wal(con)
            con.executescript(_SCHEMA)
            have = {r["name"] for r in con.execute("PRAGMA table_info(jobs)").fetchall()}
            for column, kind in _ADDED_JOB_COLUMNS.items():
                if column not in have:
                    con.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            if _says_nothing(exc):
                raise
            raise CatalogueDamaged(f"unreadable ({exc})") from exc
        finally:
            con.close()

    def _probe(self) -> None:
        con = self._connect()
        try:
            con.execute("SELECT count(*) FROM models").fetchone()
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: a missing file is an error here, never silently a new empty catalogue.
        con = sqlite3.connect(self._uri, uri=True, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        if not self.read_only:
            con.execute("PRAGMA synchronous=FULL")  # the safe level of a rollback journal
        return con

    def check(self) -> str | None:
        """What is wrong with the file (missing, empty, corrupt, foreign), or ``None``.

        Reads the whole file once (``PRAGMA quick_check``): 0.2 ms for a catalogue of 100 job
        rows, 7 ms for 10,000 (``bench/catalogue.py``).
        """
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if size == 0:
            return "empty (0 bytes)"
        try:
            con = self._connect()
            try:
                rows = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
                names = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                tables = {r[0] for r in names.fetchall()}
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            return None if _says_nothing(exc) else f"unreadable ({exc})"
        if rows != ["ok"]:
            return f"corrupt ({'; '.join(rows[:3])})"
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            return f"not a catalogue of this service (no table {', '.join(missing)})"
        return None

    def _damaged(self, exc: sqlite3.DatabaseError) -> None:
        """Raise :class:`CatalogueDamaged` if the file is damaged; else return (``exc`` stands)."""
        if _says_nothing(exc):
            return
        problem = self.check()
        if problem is None:
            return
        if self.on_damage is not None:
            self.on_damage(problem)
        raise CatalogueDamaged(f"the catalogue {self.path.name} is {problem}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            con = self._connect()
        except sqlite3.DatabaseError as exc:
            self._damaged(exc)
            raise
        try:
            yield con
        except sqlite3.DatabaseError as exc:
            self._damaged(exc)
            raise
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            con = self._connect()
        except sqlite3.DatabaseError as exc:
            self._damaged(exc)
            raise
        try:
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                except BaseException:
                    if con.in_transaction:  # SQLite rolls back by itself on a full disk
                        con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._damaged(exc)
                raise
        finally:
            con.close()

    def set_meta(self, key: str, value: dict[str, Any]) -> None:
        """Store a JSON record under ``key`` in the catalogue's own ``meta`` table."""
        with self._write() as con:
            con.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def get_meta(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key``, or ``None`` (also for a read-only older catalogue)."""
        with self._read() as con:
            if not con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone():
                return None
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    # Models -----------------------------------------------------------------------------
    def add_model(
        self,
        name: str,
        bundle_hash: str,
        n_latents: int,
        dim: int,
        created: float,
        *,
        job_id: int | None = None,
    ) -> ModelRecord | None:
        """Insert a model row (the bundle directory must already be in place).

        With ``job_id`` (the training that made the bundle) the row is written only while
        that job is still running, checked in the same transaction: a training cancelled
        (its model deleted) never registers afterwards. Returns ``None`` then.
        """
        with self._write() as con:
            if job_id is not None and not _job_running(con, job_id):
                return None
            con.execute(
                "INSERT INTO models (name, bundle_hash, n_latents, dim, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, bundle_hash, n_latents, dim, created),
            )
        model = self.model(name)
        assert model is not None  # inserted above in a committed transaction
        return model

    def delete_model(self, name: str) -> tuple[bool, list[int]]:
        """Remove a model, its potentials and finished jobs; cancel its active jobs.

        Returns:
            Whether a model of that name existed, and the ids of the jobs cancelled (a name
            being trained has jobs but no model yet).

        """
        now = time.time()
        with self._write() as con:
            gone = con.execute("DELETE FROM models WHERE name = ?", (name,)).rowcount
            con.execute("DELETE FROM potentials WHERE model = ?", (name,))
            con.execute("DELETE FROM damaged WHERE model = ?", (name,))
            active = con.execute(
                "SELECT id FROM jobs WHERE model = ? AND status IN ('queued', 'running') "
                "ORDER BY id",
                (name,),
            ).fetchall()
            con.execute(
                "UPDATE jobs SET status = 'cancelled', finished = ?, reason = 'deleted' "
                "WHERE model = ? AND status IN ('queued', 'running')",
                (now, name),
            )
            # Its finished jobs go with it: a model registered (or trained) again under this
            # name starts with no history that would say its training or fit already ran.
            con.execute(
                "DELETE FROM jobs WHERE model = ? AND status NOT IN ('queued', 'running')"
                " AND reason IS NOT 'deleted'",
                (name,),
            )
        return gone > 0, [int(r["id"]) for r in active]

    def model(self, name: str) -> ModelRecord | None:
        """Return the model called ``name``, or ``None``."""
        with self._read() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return _model(row) if row else None

    def models(self) -> list[ModelRecord]:
        """All models, oldest first."""
        with self._read() as con:
            rows = con.execute("SELECT * FROM models ORDER BY created, name").fetchall()
        return [_model(r) for r in rows]

    # Potentials -------------------------------------------------------------------------
    def publish(
        self,
        model: str,
        place: Callable[[int], str],
        bundle_hash: str,
        job_id: int | None,
        iteration: int,
        accuracy: AccuracyReport | None,
    ) -> int | None:
        """Record a potential file as the model's newest version; returns it.

        ``place(version)`` puts the file where its row will point (named after its version,
        so a rebuilt catalogue numbers it the same) and returns that path relative to the
        store; it runs inside the transaction, so no other publication takes the number.

        ``None`` (nothing recorded, ``place`` not called) when the model was deleted, its
        bundle replaced, or the publishing job is no longer running (cancelled by a refit) -
        checked in the same transaction, so a cancelled job can never publish afterwards.
        """
        with self._write() as con:
            row = con.execute(
                "SELECT published_version, bundle_hash FROM models WHERE name = ?", (model,)
            ).fetchone()
            if row is None or row["bundle_hash"] != bundle_hash:
                return None
            if job_id is not None and not _job_running(con, job_id):
                return None  # cancelled (a refit replaced it) or deleted: never publish
            # Past the newest ever written: a retracted (damaged) version is never reused.
            newest = con.execute(
                "SELECT MAX(version) AS v FROM potentials WHERE model = ?", (model,)
            ).fetchone()["v"]
            version = max(int(row["published_version"]), int(newest or 0)) + 1
            path = place(version)
            con.execute(
                "INSERT INTO potentials (model, version, path, bundle_hash, job_id, iteration, "
                "accuracy, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    version,
                    path,
                    bundle_hash,
                    job_id,
                    iteration,
                    _dump_acc(accuracy),
                    time.time(),
                ),
            )
            con.execute("UPDATE models SET published_version = ? WHERE name = ?", (version, model))
        return version

    def potential(self, model: str, version: int | None = None) -> PotentialRecord | None:
        """Return a model's potential ``version`` (default: the published one), or ``None``."""
        with self._read() as con:
            if version is None:
                row = con.execute(
                    "SELECT p.* FROM potentials p JOIN models m ON m.name = p.model "
                    "AND m.published_version = p.version WHERE p.model = ?",
                    (model,),
                ).fetchone()
            else:
                row = con.execute(
                    "SELECT * FROM potentials WHERE model = ? AND version = ?", (model, version)
                ).fetchone()
        return _potential(row) if row else None

    def retract(self, model: str, version: int, reason: str) -> int | None:
        """Withdraw a damaged version: the model's current becomes its newest older good one.

        Returns:
            The version now current (0: none left), or ``None`` when ``version`` is no longer
            the current one (already retracted elsewhere, or a newer one published).

        """
        with self._write() as con:
            row = con.execute(
                "SELECT published_version FROM models WHERE name = ?", (model,)
            ).fetchone()
            if row is None or int(row["published_version"]) != version:
                return None
            con.execute(
                "INSERT OR REPLACE INTO damaged (model, version, reason, created) "
                "VALUES (?, ?, ?, ?)",
                (model, version, reason, time.time()),
            )
            good = con.execute(
                "SELECT MAX(version) AS v FROM potentials WHERE model = ? AND version < ? "
                "AND version NOT IN (SELECT version FROM damaged WHERE model = ?)",
                (model, version, model),
            ).fetchone()["v"]
            fallback = int(good or 0)
            con.execute("UPDATE models SET published_version = ? WHERE name = ?", (fallback, model))
        return fallback

    def damage(self, model: str) -> tuple[int, str] | None:
        """The newest retracted version of ``model`` newer than its current, with the reason."""
        with self._read() as con:
            row = con.execute(
                "SELECT d.version, d.reason FROM damaged d JOIN models m ON m.name = d.model "
                "WHERE d.model = ? AND d.version > m.published_version "
                "ORDER BY d.version DESC LIMIT 1",
                (model,),
            ).fetchone()
        return (int(row["version"]), row["reason"]) if row else None

    def needs_repair(self, model: str) -> bool:
        """Whether a withdrawn (damaged) version awaits a repair fit.

        True when a version newer than the current was withdrawn and no fit has run since:
        none queued or running, none finished after the damage was recorded.
        """
        with self._read() as con:
            row = con.execute(
                "SELECT MAX(d.created) AS at FROM damaged d JOIN models m ON m.name = d.model "
                "WHERE d.model = ? AND d.version > m.published_version",
                (model,),
            ).fetchone()
            if row is None or row["at"] is None:
                return False
            since = con.execute(
                "SELECT 1 FROM jobs WHERE model = ? AND kind = 'fit' AND (status IN "
                "('queued', 'running') OR (finished IS NOT NULL AND finished >= ?)) LIMIT 1",
                (model, float(row["at"])),
            ).fetchone()
        return since is None

    def resolve_damage(self, model: str) -> int:
        """Close the damage records newer than the model's current version; returns how many.

        For a repair fit that did not beat the version served instead: that version stays,
        and the model is no longer reported as damaged.
        """
        with self._write() as con:
            return con.execute(
                "DELETE FROM damaged WHERE model = ? AND version > "
                "(SELECT published_version FROM models WHERE name = ?)",
                (model, model),
            ).rowcount

    def published_versions(self) -> dict[str, int]:
        """``{model: published version}`` for every model (0: nothing published yet)."""
        with self._read() as con:
            rows = con.execute("SELECT name, published_version FROM models").fetchall()
        return {r["name"]: int(r["published_version"]) for r in rows}

    # Jobs -------------------------------------------------------------------------------
    def enqueue(
        self,
        model: str,
        kind: JobKind,
        config: JobConfig,
        bundle_hash: str | None,
        *,
        replace: bool = False,
        train_plan: TrainPlan | None = None,
    ) -> JobRecord | None:
        """Queue a job unless one of its kind is active for the model (``replace`` cancels it).

        A train job carries its ``train_plan`` (none: the embedded digits model), and
        ``config`` is the fit queued once the trained model is registered.

        Returns:
            The new job, or ``None`` when an active job exists and ``replace`` is false.

        """
        now = time.time()
        with self._write() as con:
            active = con.execute(
                "SELECT id FROM jobs WHERE model = ? AND kind = ? "
                "AND status IN ('queued', 'running')",
                (model, kind),
            ).fetchall()
            if active and not replace:
                return None
            con.execute(
                "UPDATE jobs SET status = 'cancelled', finished = ?, reason = 'replaced' "
                "WHERE model = ? AND kind = ? AND status IN ('queued', 'running')",
                (now, model, kind),
            )
            cur = con.execute(
                "INSERT INTO jobs (model, kind, status, config, bundle_hash, created, updated, "
                "train_plan) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                (
                    model,
                    kind,
                    config.to_json(),
                    bundle_hash,
                    now,
                    now,
                    None if train_plan is None else json.dumps(train_plan.to_dict()),
                ),
            )
            job_id = int(cur.lastrowid or 0)
        job = self.job(job_id)
        assert job is not None
        return job

    def claim(self, worker: str, stale_seconds: float) -> JobRecord | None:
        """Take the oldest queued job, or a running one whose worker is gone; None if idle."""
        now = time.time()
        with self._write() as con:
            rows = con.execute(
                "SELECT id, status, worker, heartbeat FROM jobs "
                "WHERE status IN ('queued', 'running') ORDER BY id"
            ).fetchall()
            chosen = next((r["id"] for r in rows if _claimable(r, now, stale_seconds)), None)
            if chosen is None:
                return None
            con.execute(
                "UPDATE jobs SET status = 'running', worker = ?, heartbeat = ?, updated = ?, "
                "started = COALESCE(started, ?) WHERE id = ?",
                (worker, now, now, now, chosen),
            )
        return self.job(int(chosen))

    def heartbeat(self, job_id: int, worker: str, progress: Progress | None = None) -> bool:
        """Record progress; False when the job is no longer this worker's (cancelled)."""
        now = time.time()
        fields: dict[str, Any] = {"heartbeat": now, "updated": now}
        if progress is not None:
            fields.update(iteration=progress.iteration, elapsed=progress.elapsed, eta=progress.eta)
            if progress.train_l1 is not None:
                fields["train_l1"] = progress.train_l1
            if progress.accuracy is not None:
                fields["accuracy"] = _dump_acc(progress.accuracy)
            if progress.checkpoint_iteration is not None:
                fields["checkpoint_iteration"] = progress.checkpoint_iteration
        return self._update_owned(job_id, worker, fields)

    def train_heartbeat(self, job_id: int, worker: str, progress: TrainProgress) -> bool:
        """Record a training job's epoch; False when the job is no longer this worker's."""
        now = time.time()
        fields: dict[str, Any] = {
            "heartbeat": now,
            "updated": now,
            "elapsed": progress.elapsed,
            "train_progress": json.dumps(progress.__dict__),
        }
        return self._update_owned(job_id, worker, fields)

    def set_resumed(self, job_id: int, worker: str, iteration: int) -> bool:
        """Note that the job resumed from a checkpoint at ``iteration``."""
        return self._update_owned(job_id, worker, {"resumed_from": iteration})

    def finish(
        self,
        job_id: int,
        worker: str,
        status: JobStatus,
        reason: str | None,
        error: str | None = None,
    ) -> bool:
        """Close a job (``done``/``failed``) or hand it back (``queued``)."""
        now = time.time()
        fields: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "error": error,
            "updated": now,
        }
        if status == "queued":
            fields["worker"] = None
        else:
            fields["finished"] = now
        return self._update_owned(job_id, worker, fields)

    def note(self, job_id: int, reason: str) -> None:
        """Record why a job runs as it does (e.g. resumed from an older checkpoint)."""
        with self._write() as con:
            con.execute(
                "UPDATE jobs SET reason = ?, updated = ? WHERE id = ?",
                (reason, time.time(), job_id),
            )

    def job_counts(self, model: str, kind: JobKind, bundle_hash: str | None) -> dict[str, int]:
        """``{status: jobs}`` of this kind for the model's bundle."""
        with self._read() as con:
            rows = con.execute(
                "SELECT status, count(*) AS n FROM jobs WHERE model = ? AND kind = ? "
                "AND bundle_hash IS ? GROUP BY status",
                (model, kind, bundle_hash),
            ).fetchall()
        return {r["status"]: int(r["n"]) for r in rows}

    def active_job_ids(self) -> set[int]:
        """Ids of the queued and running jobs."""
        with self._read() as con:
            rows = con.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
            return {int(r["id"]) for r in rows.fetchall()}

    def prune_jobs(self, keep: int) -> int:
        """Delete finished job rows beyond the newest ``keep`` of each model; returns how many.

        The rows of names without a model (deleted, or trainings that never registered) share
        one allowance of ``keep``. Queued and running jobs are never touched.
        """
        with self._write() as con:
            rows = con.execute(
                "SELECT j.id, j.model, m.name IS NOT NULL AS registered FROM jobs j "
                "LEFT JOIN models m ON m.name = j.model "
                "WHERE j.status NOT IN ('queued', 'running') ORDER BY j.id DESC"
            ).fetchall()
            seen: dict[str | None, int] = {}
            doomed = []
            for row in rows:
                group = row["model"] if row["registered"] else None
                seen[group] = seen.get(group, 0) + 1
                if seen[group] > keep:
                    doomed.append((int(row["id"]),))
            con.executemany("DELETE FROM jobs WHERE id = ?", doomed)
        return len(doomed)

    def owns(self, job_id: int, worker: str) -> bool:
        """Whether ``worker`` holds the job's lease (it runs it and nobody took it over)."""
        with self._read() as con:
            row = con.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND worker = ? AND status = 'running'",
                (job_id, worker),
            ).fetchone()
        return row is not None

    def release_worker(self, worker: str, reason: str) -> int:
        """Queue again the running jobs of a worker known dead; returns how many."""
        with self._write() as con:
            return con.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, heartbeat = NULL, "
                "reason = ?, updated = ? WHERE worker = ? AND status = 'running'",
                (reason, time.time(), worker),
            ).rowcount

    def _update_owned(self, job_id: int, worker: str, fields: dict[str, Any]) -> bool:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._write() as con:
            n = con.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND worker = ? AND status = 'running'",
                (*fields.values(), job_id, worker),
            ).rowcount
        return n > 0

    def job(self, job_id: int) -> JobRecord | None:
        """Return the job with this id, or ``None``."""
        with self._read() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, model: str | None = None, limit: int = 20) -> list[JobRecord]:
        """Newest jobs first, of one model or all."""
        with self._read() as con:
            if model is None:
                rows = con.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = con.execute(
                    "SELECT * FROM jobs WHERE model = ? ORDER BY id DESC LIMIT ?", (model, limit)
                )
            return [_job(r) for r in rows.fetchall()]

    def has_job(self, model: str, kind: JobKind, bundle_hash: str | None) -> bool:
        """Whether any job (any status) of this kind exists for the model's bundle."""
        with self._read() as con:
            row = con.execute(
                "SELECT 1 FROM jobs WHERE model = ? AND kind = ? AND bundle_hash IS ? "
                "AND status != 'cancelled' LIMIT 1",
                (model, kind, bundle_hash),
            ).fetchone()
        return row is not None


def _says_nothing(exc: sqlite3.DatabaseError) -> bool:
    """Whether an error is the caller's or the disk's (busy, full, read-only, a constraint).

    Such errors say nothing about the file's health.
    """
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.DataError):
        return True
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_NOT_DAMAGE)


def _leave_wal(con: sqlite3.Connection) -> None:
    """Switch a catalogue of an older release from WAL mode to the rollback journal.

    SQLite folds the WAL into the file and removes ``-wal`` and ``-shm``; it needs the file to
    itself, so while a process of the older release still has it open the switch waits for
    the next start (the catalogue works either way).
    """
    con.execute("PRAGMA busy_timeout = 2000")
    try:
        con.execute("PRAGMA journal_mode=DELETE").fetchone()
    except sqlite3.OperationalError as exc:
        if not _says_nothing(exc):
            raise
    finally:
        con.execute("PRAGMA busy_timeout = 30000")


def write_rebuilt(
    path: Path, models: list[FoundModel], next_job_id: int, record: dict[str, Any]
) -> None:
    """Write a new catalogue at ``path`` (which must not exist) from what the store holds.

    Each model's current version is its newest potential that reads; newer ones that do not
    are recorded as damaged (retracted), so version numbers are never reused. Job ids continue
    after ``next_job_id - 1``, so a new job never meets an older job's checkpoint file.
    ``record`` is kept under the ``rebuilt`` key of the ``meta`` table.
    """
    if path.exists():
        raise FileExistsError(path)
    Catalog(path)  # the schema
    con = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE")
        for m in models:
            good = [p.version for p in m.potentials if p.damaged is None]
            published = max(good, default=0)
            con.execute(
                "INSERT INTO models (name, bundle_hash, n_latents, dim, created, "
                "published_version) VALUES (?, ?, ?, ?, ?, ?)",
                (m.name, m.bundle_hash, m.n_latents, m.dim, m.created, published),
            )
            for p in m.potentials:
                con.execute(
                    "INSERT INTO potentials (model, version, path, bundle_hash, job_id, "
                    "iteration, accuracy, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        m.name,
                        p.version,
                        p.path,
                        m.bundle_hash,
                        p.job_id,
                        p.iteration,
                        _dump_acc(p.accuracy),
                        p.created,
                    ),
                )
                if p.damaged is not None and p.version > published:
                    con.execute(
                        "INSERT INTO damaged (model, version, reason, created) VALUES (?, ?, ?, ?)",
                        (m.name, p.version, p.damaged, time.time()),
                    )
        if next_job_id > 1:
            con.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)", (next_job_id - 1,)
            )
        con.execute("INSERT INTO meta (key, value) VALUES ('rebuilt', ?)", (json.dumps(record),))
        con.execute("COMMIT")
    finally:
        con.close()


def _job_running(con: sqlite3.Connection, job_id: int) -> bool:
    row = con.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row is not None and row["status"] == "running"


def _claimable(row: sqlite3.Row, now: float, stale_seconds: float) -> bool:
    if row["status"] == "queued":
        return True
    owner = row["worker"] or ""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return True
    return row["heartbeat"] is None or now - float(row["heartbeat"]) > stale_seconds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Tell a killed child not yet reaped by its parent (it still answers kill(pid, 0))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _dump_acc(acc: AccuracyReport | None) -> str | None:
    return json.dumps(acc.__dict__) if acc is not None else None


def _load_acc(text: str | None) -> AccuracyReport | None:
    return AccuracyReport(**json.loads(text)) if text else None


def _model(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(
        name=row["name"],
        bundle_hash=row["bundle_hash"],
        n_latents=int(row["n_latents"]),
        dim=int(row["dim"]),
        created=float(row["created"]),
        published_version=int(row["published_version"]),
    )


def _potential(row: sqlite3.Row) -> PotentialRecord:
    return PotentialRecord(
        model=row["model"],
        version=int(row["version"]),
        path=row["path"],
        bundle_hash=row["bundle_hash"],
        job_id=row["job_id"],
        iteration=int(row["iteration"]),
        accuracy=_load_acc(row["accuracy"]),
        created=float(row["created"]),
    )


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=int(row["id"]),
        model=row["model"],
        kind=row["kind"],
        status=row["status"],
        config=JobConfig.from_json(row["config"]),
        bundle_hash=row["bundle_hash"],
        created=row["created"],
        started=row["started"],
        updated=row["updated"],
        finished=row["finished"],
        worker=row["worker"],
        iteration=int(row["iteration"]),
        elapsed=float(row["elapsed"]),
        train_l1=row["train_l1"],
        accuracy=_load_acc(row["accuracy"]),
        eta=row["eta"],
        checkpoint_iteration=row["checkpoint_iteration"],
        resumed_from=row["resumed_from"],
        reason=row["reason"],
        error=row["error"],
        train_plan=(
            TrainPlan.from_dict(json.loads(row["train_plan"])) if row["train_plan"] else None
        ),
        train_progress=(
            TrainProgress(**json.loads(row["train_progress"])) if row["train_progress"] else None
        ),
    )
