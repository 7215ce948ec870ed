"""The background worker: runs train jobs (service.training) and fits OT maps, resumably.

Lifecycle: the worker polls the catalogue; it queues a fit for every model whose potential is
missing or stale, claims the oldest queued job (or one whose worker died) and runs it. A fit
job checkpoints the solver state every ``checkpoint_every`` iterations through the fit callback,
reports progress with each heartbeat, and publishes a :class:`solver.Potential` whenever an
independent check shows it improved, at most every ``publish_interval`` seconds, and at the
end: claim a job -> ``fit`` -> ``Potential.build`` -> ``store.publish``. The job's stored
:class:`~service.job_config.JobConfig` drives both the fit and every publication. A job
that finds a checkpoint resumes from it (``fit(resume=...)``), so a
worker killed at any moment loses at most ``checkpoint_every`` iterations. SIGTERM sets the
stop event: the running fit checkpoints, hands its job back to the queue, and the worker exits.

The job's heartbeat comes from a thread (:class:`service.lease.Lease`), so no iteration, however
long, lets the lease lapse. A full disk, a read-only store or a damaged catalogue makes the
worker hand its job back and wait (1 s doubling to a minute) instead of exiting; after each job
it removes staging leftovers, checkpoints of finished jobs beyond ``keep_checkpoints`` and job
rows beyond ``job_history``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from models.runtime import cpu_threads, resolve_device
from service.catalog import CatalogueDamaged
from service.job_config import job_config
from service.jobs import JobRecord, JobStatus, Progress, worker_id
from service.lease import Lease, beat_interval
from service.settings import Settings
from service.store import ModelStore, storage_problem
from service.training import digits_plan, run_train_job
from service.worker_process import watch_parent
from solver import (
    AccuracyReport,
    FitProgress,
    OTProblem,
    Potential,
    backend_for_device,
    check_accuracy,
    fit,
    make_problem,
)

log = logging.getLogger("aeot.worker")

# A new potential is published only when its L1 beats the published one by this factor.
_IMPROVEMENT = 0.98
# Seconds a worker waits after a full disk, read-only store or damaged catalogue (doubling).
_WAIT_FIRST = 1.0
_WAIT_MAX = 60.0


class _Waiting(Exception):
    """The store cannot take the job's writes now (full, read-only, catalogue damaged)."""


@dataclass
class _FitRun:
    """State of one running fit job, shared by the progress callback's helpers."""

    job: JobRecord
    problem: OTProblem
    best_l1: float
    lease: Lease
    repair: bool = False
    last_publish: float = field(default_factory=time.monotonic)
    checks: list[tuple[float, float]] = field(default_factory=list)
    published_iteration: int = -1
    checkpoint_iteration: int | None = None
    last_check: AccuracyReport | None = None
    lost: bool = False


class Worker:
    """Runs jobs from the store's queue until stopped.

    Args:
        store: the model store.
        settings: fit, publication and device settings.
        stop: set it to make the worker checkpoint and exit (SIGTERM does).

    """

    def __init__(
        self, store: ModelStore, settings: Settings, stop: threading.Event | None = None
    ) -> None:
        self.store = store
        self.queue = store.queue
        self.catalog = store.catalog
        self.settings = settings
        self.stop = stop or threading.Event()
        self.id = worker_id()
        self.device = resolve_device(settings.device)
        self.backend = backend_for_device(self.device)

    def run(self, *, max_jobs: int | None = None, idle_exit: bool = False) -> int:
        """Claim and run jobs until stopped; returns the number of jobs run.

        A store that cannot take writes (full disk, read-only, damaged catalogue) makes the
        worker wait and try again, 1 s doubling to a minute, instead of failing: a supervised
        worker would otherwise exit and be restarted in a loop. With ``idle_exit`` the error
        is raised instead (a foreground ``aeot fit`` says what is wrong). A job stopped by a
        full disk is handed back in the space of the store's reserve file, freed for it; the
        reserve is written again before the next claim, so the worker claims nothing until
        space has returned.

        Args:
            max_jobs: stop after this many jobs.
            idle_exit: return as soon as the queue is empty (for ``aeot fit`` and tests).

        """
        done = 0
        wait = _WAIT_FIRST
        with cpu_threads(self.settings.worker_threads):
            while not self.stop.is_set() and (max_jobs is None or done < max_jobs):
                try:
                    self.store.refresh_mode()
                    self.store.restore_reserve()  # fails while the disk is still full
                    self.schedule()
                    job = self.queue.claim(self.id, self.settings.stale_seconds)
                    if job is None:
                        if idle_exit:
                            break
                        self.stop.wait(self.settings.poll_interval)
                        continue
                    self.run_job(job)
                    done += 1
                    self.tidy()
                except Exception as exc:
                    problem = _unwritable(exc)
                    if problem is None or idle_exit:
                        raise
                    self._wait_out(problem, exc, wait)
                    wait = min(2 * wait, _WAIT_MAX)
                    continue
                wait = _WAIT_FIRST
        return done

    def _wait_out(self, problem: str, exc: BaseException, seconds: float) -> None:
        """Log why the store takes no writes, repair a damaged catalogue, wait ``seconds``."""
        log.warning("%s (%s); waiting %.0f s before trying again", problem, exc, seconds)
        if isinstance(exc, CatalogueDamaged) or (
            isinstance(exc, _Waiting) and isinstance(exc.__cause__, CatalogueDamaged)
        ):
            try:
                self.store.heal()
            except Exception as heal_exc:
                log.warning("catalogue not rebuilt yet: %s", heal_exc)
        self.stop.wait(seconds)

    def tidy(self) -> None:
        """Remove what finished jobs leave: staging entries, old checkpoints, old job rows."""
        self.store.sweep_staging()
        self.store.prune(
            keep_checkpoints=self.settings.keep_checkpoints, job_history=self.settings.job_history
        )

    def schedule(self) -> None:
        """Queue the default model's training (empty store) and missing or stale fits."""
        s = self.settings
        if s.embedded_default and not self.catalog.models():
            if not self.queue.has_job(s.default_model, "train", None):
                plan = digits_plan(s.fit_seed)
                self.store.enqueue_train(s.default_model, plan=plan, fit=job_config(s))
        self.store.ensure_fit_jobs(job_config(s))

    def run_job(self, job: JobRecord) -> None:
        """Run one claimed job to its end (done, failed, or handed back when stopped).

        Raises:
            _Waiting: the store took none of the job's writes (full disk, read-only store,
                damaged catalogue); the job is handed back to the queue where possible, and
                does not count as a failed attempt.

        """
        log.info("job %d (%s %s) started", job.id, job.kind, job.model)
        interval = beat_interval(self.settings.stale_seconds)
        try:
            if job.kind == "train":
                status, reason = run_train_job(self.store, job, self.id, self.stop, interval)
            else:
                with Lease(self.queue, job, self.id, interval) as lease:
                    status, reason = self._fit(job, lease)
        except Exception as exc:  # a failed job must not take the worker down
            problem = _unwritable(exc)
            if problem is not None:
                log.warning("job %d handed back: %s (%s)", job.id, problem, exc)
                try:
                    self.store.release_reserve()  # room for the hand-back on a full disk
                    self.queue.finish(job.id, self.id, "queued", f"{problem}; waits to run again")
                except Exception:
                    log.warning("job %d could not be handed back; its lease will lapse", job.id)
                raise _Waiting(problem) from exc
            log.exception("job %d failed", job.id)
            self.queue.finish(job.id, self.id, "failed", "error", f"{exc}")
            return
        self.queue.finish(job.id, self.id, status, reason)
        log.info("job %d %s (%s)", job.id, status, reason)

    def _fit(self, job: JobRecord, lease: Lease) -> tuple[JobStatus, str]:
        bundle = self.store.load_bundle(job.model)
        problem = make_problem(bundle.latents)
        config = replace(job.config.fit, backend=self.backend)
        resume = self.store.load_checkpoint(job)
        if resume is not None:
            log.info("job %d resumes from iteration %d", job.id, resume.iteration)
            self.queue.set_resumed(job.id, self.id, resume.iteration)
        published = self.catalog.potential(job.model)
        best = math.inf
        if published is not None and published.bundle_hash == job.bundle_hash:
            best = published.accuracy.l1 if published.accuracy else math.inf
        run = _FitRun(
            job=job,
            problem=problem,
            best_l1=best,
            lease=lease,
            # The served version was withdrawn (damaged): this fit repairs it.
            repair=self.catalog.damage(job.model) is not None,
            checkpoint_iteration=resume.iteration if resume else None,
        )
        result = fit(problem, config, callback=lambda p: self._on_progress(run, p), resume=resume)
        # Only the lease holder writes the job's files: a worker that lost the job (cancelled,
        # or taken over after its lease expired) must not overwrite the new owner's checkpoint.
        if run.lost or lease.lost.is_set() or not self.queue.owns(job.id, self.id):
            return "cancelled", "cancelled"
        if result.state.iteration != run.checkpoint_iteration:  # else it is on disk already
            self.store.save_checkpoint(job, result.state)
        if self.stop.is_set() and result.reason == "callback":
            return "queued", "worker stopped"
        if result.state.iteration != run.published_iteration:
            check = result.accuracy if result.converged else None
            self._maybe_publish(
                run, result.state.iteration, result.state.elapsed, result.heights, check, last=True
            )
        return "done", result.reason

    def _on_progress(self, run: _FitRun, progress: FitProgress) -> bool:
        """Fit callback: checkpoint, heartbeat, publish; False stops the fit."""
        record, state = progress.record, progress.state
        now = time.monotonic()
        if run.lease.lost.is_set():
            run.lost = True  # the files are no longer this worker's: write nothing
            return False
        stopping = self.stop.is_set()
        checkpoint = state.iteration % self.settings.checkpoint_every == 0
        if checkpoint or stopping:
            if not self.queue.owns(run.job.id, self.id):
                run.lost = True  # cancelled, deleted or taken over: the files are not ours
                return False
            self.store.save_checkpoint(run.job, state)
            run.checkpoint_iteration = state.iteration
        check = record.check
        if check is not None:
            run.checks.append((record.elapsed, check.l1))
            run.last_check = check
        # A stopping worker only checkpoints: a publication (a Monte Carlo pass) would eat into
        # the grace period, and the job's next run publishes from the checkpoint anyway.
        due = check is not None or now - run.last_publish >= self.settings.publish_interval
        if due and not stopping:
            # The exact fit (2D/3D) has a check at every iteration, so it may publish before
            # its first heartbeat: a job taken over must not publish.
            if not self.queue.owns(run.job.id, self.id):
                run.lost = True
                return False
            self._maybe_publish(run, state.iteration, state.elapsed, progress.heights, check)
        # Progress goes to the catalogue with the lease's next heartbeat (its own thread).
        run.lease.report(
            Progress(
                iteration=state.iteration,
                elapsed=record.elapsed,
                train_l1=record.train_l1,
                accuracy=run.last_check,
                eta=_eta(run.checks, progress.target_l1, record.elapsed),
                checkpoint_iteration=run.checkpoint_iteration,
            )
        )
        if run.lease.lost.is_set():
            run.lost = True  # cancelled, deleted or taken over meanwhile
            return False
        return not self.stop.is_set()

    def _maybe_publish(
        self,
        run: _FitRun,
        iteration: int,
        elapsed: float,
        heights: np.ndarray,
        check: AccuracyReport | None,
        *,
        last: bool = False,
    ) -> None:
        """Publish the heights if an independent check shows they beat the published.

        The ``last`` publication of a repair fit (its model's served version was withdrawn as
        damaged) that published nothing yet needs only to be no worse than the version served
        instead (within the 2 % margin): a deterministic refit reproduces the withdrawn
        version's accuracy, which is not 2 % better than itself. A repair worse than that
        publishes nothing and closes the damage record, so the problem is no longer reported.
        """
        run.last_publish = time.monotonic()
        config, problem = run.job.config, run.problem
        if check is None:
            check = check_accuracy(
                problem,
                heights,
                n_samples=config.potential.check_samples_per_cell * problem.n_targets,
                seed=config.seed,
                stream=iteration,
                backend=self.backend,
            )
            run.checks.append((elapsed, check.l1))
        run.last_check = check
        repairing = last and run.repair and run.published_iteration < 0
        bar = run.best_l1 / _IMPROVEMENT if repairing else _IMPROVEMENT * run.best_l1
        if check.l1 >= bar:
            if repairing:
                self.catalog.resolve_damage(run.job.model)
                log.warning(
                    "model %s: the repair fit (L1 %.4f) does not match the served version "
                    "(L1 %.4f), which stays",
                    run.job.model,
                    check.l1,
                    run.best_l1,
                )
            return
        potential = Potential.build(
            problem,
            heights,
            seed=config.seed,
            config=config.potential,
            accuracy=check,
            backend=self.backend,
        )
        version = self.store.publish(run.job, potential, iteration)
        run.best_l1, run.published_iteration = check.l1, iteration
        log.info(
            "model %s: published v%s (iteration %d, L1 %.4f)",
            run.job.model,
            version,
            iteration,
            check.l1,
        )


def _unwritable(exc: BaseException) -> str | None:
    """Why the store takes no writes now, when that is what ``exc`` says; else ``None``."""
    if isinstance(exc, _Waiting):
        return str(exc)
    if isinstance(exc, CatalogueDamaged):
        return f"{exc}; it is being rebuilt"
    return storage_problem(exc)


def _eta(checks: list[tuple[float, float]], target: float, elapsed: float) -> float | None:
    """Seconds until L1 reaches ``target``, extrapolating log L1 linearly in time."""
    if len(checks) < 2:
        return None
    (t0, l0), (t1, l1) = checks[-2], checks[-1]
    if l1 <= target:
        return 0.0
    if t1 <= t0 or l1 >= l0 or l0 <= 0:
        return None
    rate = (math.log(l0) - math.log(l1)) / (t1 - t0)
    return max(0.0, (math.log(l1) - math.log(target)) / rate - (elapsed - t1))


# Seconds a stopped worker waits for its fit's iteration to end before it hands the job back
# and exits (inside docker stop's 10 s, leaving the server time to exit after it).
STOP_GRACE = 6.0


def run_worker(settings: Settings) -> None:
    """Entry point of the worker process (``aeot worker``): runs until SIGTERM or SIGINT.

    A stopped fit checkpoints at the end of its iteration; one iteration of a tight fit can
    outlast a container's stop grace (docker stop: 10 s), so after :data:`STOP_GRACE` seconds
    the worker hands its job back to the queue and exits at once: the job resumes from its
    last periodic checkpoint, exactly as after a kill, without waiting for its lease to lapse.
    """
    stop = threading.Event()
    worker: Worker | None = None

    def _hand_back() -> None:
        if worker is not None:
            n = worker.queue.release_worker(worker.id, "worker stopped")
            log.warning(
                "still in a fit iteration %.0f s after the signal: %d job(s) handed back "
                "to resume from their last checkpoint",
                STOP_GRACE,
                n,
            )
        logging.shutdown()
        os._exit(0)

    grace = threading.Timer(STOP_GRACE, _hand_back)
    grace.daemon = True

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: checkpointing and stopping", signum)
        stop.set()
        if not grace.is_alive():
            grace.start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    watch_parent(stop)  # started by a server: never outlive it
    worker = Worker(ModelStore(settings.store), settings, stop)
    log.info(
        "worker %s on store %s (device %s from AEOT_DEVICE=%s, backend %s)",
        worker.id,
        settings.store,
        worker.device,
        settings.device,
        worker.backend,
    )
    worker.run()
    grace.cancel()
    log.info("worker %s stopped", worker.id)


if __name__ == "__main__":
    from service.logs import configure_logging

    _settings = Settings()
    configure_logging(_settings.log_level, _settings.log_format)
    run_worker(_settings)
    # What the worker owns is on disk by now (checkpoints and the catalogue are written
    # atomically). The interpreter's own teardown of torch, FAISS and scipy took 2-3 s on the
    # loaded 2-core box (0.1 s without it), and the server waits for this process before it
    # exits: a container's stop grace (docker stop: 10 s) would spend it.
    logging.shutdown()
    os._exit(0)
