"""The job queue: fit and train jobs, in the ``jobs`` table of the store's catalogue.

A worker claims the oldest queued job, or a running one whose worker died (same host, dead pid)
or stopped sending heartbeats, in one transaction, so several workers can share a store. A
worker writes to a job only while it holds it (:meth:`JobQueue.owns`): every update names the
worker and fails once the job was cancelled or taken over. The queue shares the catalogue's
file, connections and damage handling (:class:`service.catalog.Catalog`); the store opens both.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models import TrainPlan
from service.catalog import Catalog, dump_accuracy, load_accuracy, row_record
from service.job_config import JobConfig
from solver import AccuracyReport

JobKind = Literal["fit", "train"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
ACTIVE = ("queued", "running")


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


def worker_id() -> str:
    """``host:pid`` of this process: lets a worker on the same host detect a dead owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobQueue:
    """The fit and train jobs of a store (rows of its catalogue), oldest first in the queue.

    Args:
        catalog: the store's catalogue, whose file holds the ``jobs`` table.

    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

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
        with self._catalog.write() as con:
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
            plan = None if train_plan is None else json.dumps(train_plan.to_dict())
            cur = con.execute(
                "INSERT INTO jobs (model, kind, status, config, bundle_hash, created, updated, "
                "train_plan) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                (model, kind, config.to_json(), bundle_hash, now, now, plan),
            )
            job_id = int(cur.lastrowid or 0)
        job = self.job(job_id)
        assert job is not None
        return job

    def claim(self, worker: str, stale_seconds: float) -> JobRecord | None:
        """Take the oldest queued job, or a running one whose worker is gone; None if idle."""
        now = time.time()
        with self._catalog.write() as con:
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
                fields["accuracy"] = dump_accuracy(progress.accuracy)
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
        with self._catalog.write() as con:
            con.execute(
                "UPDATE jobs SET reason = ?, updated = ? WHERE id = ?",
                (reason, time.time(), job_id),
            )

    def job_counts(self, model: str, kind: JobKind, bundle_hash: str | None) -> dict[str, int]:
        """``{status: jobs}`` of this kind for the model's bundle."""
        with self._catalog.read() as con:
            rows = con.execute(
                "SELECT status, count(*) AS n FROM jobs WHERE model = ? AND kind = ? "
                "AND bundle_hash IS ? GROUP BY status",
                (model, kind, bundle_hash),
            ).fetchall()
        return {r["status"]: int(r["n"]) for r in rows}

    def active_job_ids(self) -> set[int]:
        """Ids of the queued and running jobs."""
        with self._catalog.read() as con:
            rows = con.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
            return {int(r["id"]) for r in rows.fetchall()}

    def prune_jobs(self, keep: int) -> int:
        """Delete finished job rows beyond the newest ``keep`` of each model; returns how many.

        The rows of names without a model (deleted, or trainings that never registered) share
        one allowance of ``keep``. Queued and running jobs are never touched.
        """
        with self._catalog.write() as con:
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
        with self._catalog.read() as con:
            row = con.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND worker = ? AND status = 'running'",
                (job_id, worker),
            ).fetchone()
        return row is not None

    def release_worker(self, worker: str, reason: str) -> int:
        """Queue again the running jobs of a worker known dead; returns how many."""
        with self._catalog.write() as con:
            return con.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, heartbeat = NULL, "
                "reason = ?, updated = ? WHERE worker = ? AND status = 'running'",
                (reason, time.time(), worker),
            ).rowcount

    def _update_owned(self, job_id: int, worker: str, fields: dict[str, Any]) -> bool:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._catalog.write() as con:
            n = con.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND worker = ? AND status = 'running'",
                (*fields.values(), job_id, worker),
            ).rowcount
        return n > 0

    def job(self, job_id: int) -> JobRecord | None:
        """Return the job with this id, or ``None``."""
        with self._catalog.read() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, model: str | None = None, limit: int = 20) -> list[JobRecord]:
        """Newest jobs first, of one model or all."""
        with self._catalog.read() as con:
            if model is None:
                rows = con.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = con.execute(
                    "SELECT * FROM jobs WHERE model = ? ORDER BY id DESC LIMIT ?", (model, limit)
                )
            return [_job(r) for r in rows.fetchall()]

    def has_job(self, model: str, kind: JobKind, bundle_hash: str | None) -> bool:
        """Whether any job (any status) of this kind exists for the model's bundle."""
        with self._catalog.read() as con:
            row = con.execute(
                "SELECT 1 FROM jobs WHERE model = ? AND kind = ? AND bundle_hash IS ? "
                "AND status != 'cancelled' LIMIT 1",
                (model, kind, bundle_hash),
            ).fetchone()
        return row is not None

    def latest(self, model: str, kind: JobKind = "fit") -> JobRecord | None:
        """The newest job of this kind of ``model`` (any status), or ``None``."""
        jobs = [j for j in self.jobs(model, limit=5) if j.kind == kind]
        return jobs[0] if jobs else None


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


def _job(row: sqlite3.Row) -> JobRecord:
    plan, progress = row["train_plan"], row["train_progress"]
    return row_record(
        JobRecord,
        row,
        config=JobConfig.from_json(row["config"]),
        accuracy=load_accuracy(row["accuracy"]),
        train_plan=TrainPlan.from_dict(json.loads(plan)) if plan else None,
        train_progress=TrainProgress(**json.loads(progress)) if progress else None,
    )
