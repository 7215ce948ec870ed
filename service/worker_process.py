"""The fit worker as a supervised child process of the server (``AEOT_WORKER=true``).

A supervisor thread starts ``python -m service.worker``, watches it every ``_WATCH_EVERY``
seconds and, when it dies without being asked to, logs the exit, hands the jobs it held back
to the queue (they resume from their checkpoints) and starts a new worker after a back-off
(``_BACKOFF_FIRST`` doubling to ``_BACKOFF_MAX``; reset after ``_STABLE_AFTER`` seconds of
uptime). Its state (:class:`WorkerState`) is what ``/readyz`` and ``/metrics`` report.

A worker never outlives its server: the child asks Linux for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)`` at its start, :func:`watch_parent`), and it also watches its
parent's pid and exits at most ``ORPHAN_GRACE`` seconds after the server is gone, checkpoint
or not. The parent-death signal follows the *thread* that started the child, so every child
is started from the supervisor thread, which lives as long as the supervision.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Literal

from service.settings import Settings
from service.store import ModelStore

log = logging.getLogger("aeot.server")

# Seconds a stopping worker gets to checkpoint before it is killed.
STOP_TIMEOUT = 20.0
# Seconds an orphaned worker may spend checkpointing before it exits regardless.
ORPHAN_GRACE = 2.0
# Environment variable naming the server pid a worker watches.
PARENT_ENV = "AEOT_PARENT_PID"
_WATCH_EVERY = 0.2
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0
_PR_SET_PDEATHSIG = 1

WorkerStatus = Literal["starting", "running", "restarting", "stopped"]


@dataclass(frozen=True, kw_only=True)
class WorkerState:
    """What the supervisor knows about its worker.

    Attributes:
        status: ``running``, ``restarting`` (dead, a new one starts after the back-off),
            ``starting`` (not started yet) or ``stopped`` (the server is shutting down).
        pid: the current child's pid, if one runs.
        restarts: workers started after an unexpected exit.
        last_exit: how the last worker ended (``"exit code 1"``, ``"signal 9"``), or ``None``.
        last_exit_at: when it ended (seconds since the epoch), or ``None``.

    """

    status: WorkerStatus
    pid: int | None
    restarts: int
    last_exit: str | None
    last_exit_at: float | None


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when the thread that started it ends."""
    with suppress(OSError, AttributeError):  # not Linux: the worker's parent watch still applies
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def describe_exit(code: int) -> str:
    """``Popen.returncode`` in words: negative codes are signals."""
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class WorkerProcess:
    """Start, supervise and stop the worker child.

    Args:
        settings: passed to the child as ``AEOT_*`` environment variables (store made absolute).
        store: the model store, to hand a dead worker's jobs back to the queue
            (default: the one in ``settings.store``).

    """

    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or ModelStore(settings.store)
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="aeot-supervisor", daemon=True)
        self._lock = threading.Lock()
        self._state = WorkerState(
            status="starting", pid=None, restarts=0, last_exit=None, last_exit_at=None
        )

    @property
    def state(self) -> WorkerState:
        """The worker's current state (a consistent snapshot)."""
        with self._lock:
            return self._state

    def start(self, timeout: float = 10.0) -> None:
        """Start supervising: the first child starts now (waits until it is spawned)."""
        self._thread.start()
        self._started.wait(timeout)

    def stop(self) -> None:
        """SIGTERM the worker (it checkpoints and exits), SIGKILL after ``STOP_TIMEOUT``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT + 5.0)

    def _supervise(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stop.is_set():
            started = time.monotonic()
            proc = self._spawn()
            self._started.set()
            while proc.poll() is None and not self._stop.wait(_WATCH_EVERY):
                pass
            if self._stop.is_set():
                self._terminate(proc)
                break
            if time.monotonic() - started >= _STABLE_AFTER:
                backoff = _BACKOFF_FIRST
            self._on_death(proc, backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(2 * backoff, _BACKOFF_MAX)
        with self._lock:
            self._state = replace(self._state, status="stopped", pid=None)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env()}
        env["AEOT_STORE"] = str(self.settings.store.resolve())
        env[PARENT_ENV] = str(os.getpid())
        proc = subprocess.Popen([sys.executable, "-m", "service.worker"], env=env)
        self.proc = proc
        with self._lock:
            restarts = self._state.restarts + (self._state.status == "restarting")
            self._state = replace(self._state, status="running", pid=proc.pid, restarts=restarts)
        log.info("worker process %d started", proc.pid)
        return proc

    def _on_death(self, proc: subprocess.Popen[bytes], backoff: float) -> None:
        """Report a worker that died unasked and hand its jobs back to the queue."""
        how = describe_exit(int(proc.returncode))
        log.error("worker process %d died (%s); restarting in %.1f s", proc.pid, how, backoff)
        reason = f"worker died ({how}); resumes from its checkpoint"
        try:
            n = self.store.queue.release_worker(f"{socket.gethostname()}:{proc.pid}", reason)
        except Exception:  # the catalogue may be unreadable: the next worker reclaims anyway
            log.exception("could not hand the dead worker's jobs back")
            n = 0
        if n:
            log.info("%d job(s) of worker %d queued again", n, proc.pid)
        with self._lock:
            self._state = replace(
                self._state, status="restarting", pid=None, last_exit=how, last_exit_at=time.time()
            )

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in %.0f s; killing", proc.pid, STOP_TIMEOUT)
            proc.kill()
            proc.wait()


def watch_parent(stop: threading.Event, grace: float = ORPHAN_GRACE) -> threading.Thread | None:
    """In a worker started by a server: stop, then exit, when that server is gone.

    Asks for SIGTERM at the parent's death (the worker's handler sets ``stop``), and sets
    ``stop`` itself (the running fit checkpoints and hands its job back) as soon as the parent
    pid changes, and ends the process ``grace`` seconds later if it is still running, so an
    orphan never keeps a job's lease. Returns the watching thread, or ``None`` outside a
    server (``aeot worker`` runs unwatched).
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return None
    expected = int(parent)
    _die_with_parent()  # then check the parent: it may have died before this line

    def loop() -> None:
        while os.getppid() == expected:
            time.sleep(_WATCH_EVERY)
        log.warning("server %d is gone; stopping this worker within %.0f s", expected, grace)
        stop.set()
        time.sleep(grace)
        os._exit(0)  # the fit did not return in time: its last checkpoint stands

    thread = threading.Thread(target=loop, name="aeot-parent-watch", daemon=True)
    thread.start()
    return thread
