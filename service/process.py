"""The worker as a child process of the server (``AEOT_WORKER=true``, the default)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from service.settings import Settings

log = logging.getLogger("aeot.server")

# Seconds a stopping worker gets to checkpoint before it is killed.
STOP_TIMEOUT = 20.0


class WorkerProcess:
    """Start ``python -m service.worker`` with the server's settings; stop it with SIGTERM.

    Args:
        settings: passed to the child as ``AEOT_*`` environment variables (store made absolute).

    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child process."""
        env = {**os.environ, **self.settings.to_env()}
        env["AEOT_STORE"] = str(self.settings.store.resolve())
        self.proc = subprocess.Popen([sys.executable, "-m", "service.worker"], env=env)
        log.info("worker process %d started", self.proc.pid)

    def stop(self) -> None:
        """SIGTERM (the worker checkpoints and exits), SIGKILL after ``STOP_TIMEOUT``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in %.0f s; killing", self.proc.pid, STOP_TIMEOUT)
            self.proc.kill()
            self.proc.wait()
