"""A running job's lease, kept alive from a thread whatever the job's own thread is doing.

A worker holds a job while its heartbeat is fresh (``stale_seconds``); another worker takes a
job over whose heartbeat is older. A fit or training step can take longer than that (a long
iteration, a publication's Monte Carlo pass, an epoch on a large dataset), so the heartbeat
comes from its own thread, every ``interval`` seconds, and carries the latest progress the job
reported. The job's thread only reads :attr:`Lease.lost` to learn that the job was taken from
it (cancelled, deleted, taken over), and stops.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from types import TracebackType

from service.catalog import CatalogueDamaged
from service.jobs import JobQueue, JobRecord, Progress

log = logging.getLogger("aeot.worker")

# Progress reaches the catalogue at most this often (a write costs a few fsyncs).
PROGRESS_EVERY = 1.0


def beat_interval(stale_seconds: float) -> float:
    """Seconds between heartbeats: four per lease, and progress at least once a second."""
    return min(PROGRESS_EVERY, stale_seconds / 4)


class Lease:
    """Heartbeats of one claimed job from a thread, while the ``with`` block runs.

    Args:
        queue: the store's job queue.
        job: the claimed job.
        worker: the worker id holding it.
        interval: seconds between heartbeats (:func:`beat_interval`).

    """

    def __init__(self, queue: JobQueue, job: JobRecord, worker: str, interval: float) -> None:
        self.queue = queue
        self.job = job
        self.worker = worker
        self.interval = interval
        self.lost = threading.Event()
        self._progress: Progress | None = None
        self._lock = threading.Lock()  # one heartbeat write at a time
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"job-{job.id}-lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()
        if self._progress is not None and not self.lost.is_set():
            self.beat()  # the last progress reported, before the job is closed

    def report(self, progress: Progress) -> None:
        """Set the progress the next heartbeat writes (the job's thread never waits on it)."""
        self._progress = progress

    def beat(self) -> bool:
        """Write a heartbeat (with the pending progress) now; False once the lease is lost."""
        with self._lock:
            progress, self._progress = self._progress, None
            try:
                held = self.queue.heartbeat(self.job.id, self.worker, progress)
            except (CatalogueDamaged, sqlite3.OperationalError) as exc:
                # A damaged catalogue (rebuilt without this job) or a full disk: not a lost
                # lease yet; the next heartbeat tells.
                log.warning("job %d: heartbeat not written (%s)", self.job.id, exc)
                if self._progress is None:
                    self._progress = progress
                return not self.lost.is_set()
            if not held:
                self.lost.set()
            return held

    def _loop(self) -> None:
        while not self._done.wait(self.interval) and not self.lost.is_set():
            self.beat()
