"""The store's SQLite catalogue: models, published potentials and fit/train jobs.

One file (``catalog.sqlite3``) with a rollback journal: no file beside it between writes.
(SQLite's WAL mode keeps a ``-wal`` and a memory-mapped ``-shm`` file beside the database; a
``-shm`` truncated by anyone kills every process that has it mapped with SIGBUS, and a deleted
``-wal`` or ``-shm`` breaks every later connection, so the service does not use it.) Every write
is one ``BEGIN IMMEDIATE`` transaction: a crash leaves the previous consistent state. The
``jobs`` table is the work queue, read and written through :class:`service.jobs.JobQueue`; this
module keeps the few transactions that span models and jobs (a deletion cancels its jobs; a
registration or publication checks its job still runs).

A catalogue that is missing, empty or corrupt raises :class:`CatalogueDamaged` from every
operation (checked with :meth:`Catalog.check`, never guessed from one error); the store then
rebuilds it from its model directories (:func:`write_rebuilt`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from solver import AccuracyReport

R = TypeVar("R")
CATALOG_FILE = "catalog.sqlite3"
# SQLite's files beside the database: the rollback journal of a write in progress, and the WAL
# files an older release (or another tool) may have left.
SIDE_FILES = ("-journal", "-wal", "-shm")

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
_ADD_POTENTIAL = (
    "INSERT INTO potentials (model, version, path, bundle_hash, job_id, iteration, accuracy, "
    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
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
        self, path: Path, *, read_only: bool = False, on_damage: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        self.on_damage = on_damage
        self.read_only = read_only
        self._uri = ""
        self.reopen(read_only=read_only)

    def reopen(self, *, read_only: bool | None = None) -> None:
        """Open the file again: after a rebuild replaced it, or to switch reading/writing.

        The store's job queue and its serving index keep this object, so it stays the same
        across rebuilds and remounts.

        Raises:
            CatalogueDamaged: the file exists but is not a readable catalogue.

        """
        path = self.path
        if read_only is not None:
            self.read_only = read_only
        read_only = self.read_only
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
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection; SQLite errors of a damaged file raise CatalogueDamaged (also in write)."""
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
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection in one ``BEGIN IMMEDIATE`` transaction, committed when the block ends.

        An exception rolls it back; SQLite errors of a damaged file raise CatalogueDamaged.
        """
        with self.read() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                if con.in_transaction:  # SQLite rolls back by itself on a full disk
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def get_meta(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key``, or ``None`` (also for a read-only older catalogue)."""
        with self.read() as con:
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
        with self.write() as con:
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
        with self.write() as con:
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
        with self.read() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return row_record(ModelRecord, row) if row else None

    def models(self) -> list[ModelRecord]:
        """All models, oldest first."""
        with self.read() as con:
            rows = con.execute("SELECT * FROM models ORDER BY created, name").fetchall()
        return [row_record(ModelRecord, r) for r in rows]

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
        with self.write() as con:
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
            row = (model, version, path, bundle_hash, job_id, iteration)
            con.execute(_ADD_POTENTIAL, (*row, dump_accuracy(accuracy), time.time()))
            con.execute("UPDATE models SET published_version = ? WHERE name = ?", (version, model))
        return version

    def potential(self, model: str, version: int | None = None) -> PotentialRecord | None:
        """Return a model's potential ``version`` (default: the published one), or ``None``."""
        with self.read() as con:
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
        if row is None:
            return None
        return row_record(PotentialRecord, row, accuracy=load_accuracy(row["accuracy"]))

    def retract(self, model: str, version: int, reason: str) -> int | None:
        """Withdraw a damaged version: the model's current becomes its newest older good one.

        Returns:
            The version now current (0: none left), or ``None`` when ``version`` is no longer
            the current one (already retracted elsewhere, or a newer one published).

        """
        with self.write() as con:
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
        with self.read() as con:
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
        with self.read() as con:
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
        with self.write() as con:
            return con.execute(
                "DELETE FROM damaged WHERE model = ? AND version > "
                "(SELECT published_version FROM models WHERE name = ?)",
                (model, model),
            ).rowcount

    def published_versions(self) -> dict[str, int]:
        """``{model: published version}`` for every model (0: nothing published yet)."""
        with self.read() as con:
            rows = con.execute("SELECT name, published_version FROM models").fetchall()
        return {r["name"]: int(r["published_version"]) for r in rows}


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
    with Catalog(path).write() as con:  # the schema, then the rows
        for m in models:
            good = [p.version for p in m.potentials if p.damaged is None]
            published = max(good, default=0)
            con.execute(
                "INSERT INTO models (name, bundle_hash, n_latents, dim, created, "
                "published_version) VALUES (?, ?, ?, ?, ?, ?)",
                (m.name, m.bundle_hash, m.n_latents, m.dim, m.created, published),
            )
            for p in m.potentials:
                row = (m.name, p.version, p.path, m.bundle_hash, p.job_id, p.iteration)
                con.execute(_ADD_POTENTIAL, (*row, dump_accuracy(p.accuracy), p.created))
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


def _job_running(con: sqlite3.Connection, job_id: int) -> bool:
    row = con.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row is not None and row["status"] == "running"


def dump_accuracy(acc: AccuracyReport | None) -> str | None:
    """An accuracy report as the catalogue stores it (JSON text; ``None`` stays ``None``)."""
    return json.dumps(acc.__dict__) if acc is not None else None


def load_accuracy(text: str | None) -> AccuracyReport | None:
    """The accuracy report stored as ``text`` by :func:`dump_accuracy`."""
    return AccuracyReport(**json.loads(text)) if text else None


def row_record(cls: type[R], row: sqlite3.Row, **decoded: Any) -> R:
    """The dataclass ``cls`` of a row: the columns its fields name, ``decoded`` ones replaced."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{**{k: row[k] for k in row.keys() if k in names}, **decoded})
