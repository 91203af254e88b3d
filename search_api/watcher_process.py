"""`serve --watch`: the watcher as one dedicated child process of the gunicorn arbiter.

Not inside a request worker: with several workers there must be exactly one writer, and a worker
may be replaced at any time. The arbiter starts `lookalike watch` once its workers are started,
starts it again (after a pause that grows while it keeps failing) if it dies, and stops it with
the server: SIGTERM, a few seconds to finish its batch and publish, then SIGKILL. The watcher ends
by itself if the arbiter dies (indexer.lifeline), and runs in a session of its own, so that a
Ctrl-C meant for the server reaches it once, through the arbiter.

Nothing here imports TensorFlow or the app: this runs in the arbiter.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from gunicorn.arbiter import Arbiter

log = logging.getLogger(__name__)

RESTART_SECONDS = 2.0  # first pause before starting a watcher that died again
MAX_RESTART_SECONDS = 300.0
HEALTHY_SECONDS = 60.0  # a watcher that ran this long starts again without a pause
STOP_SECONDS = 10.0


class WatcherProcess:
    """The server's watcher process: kept running while the server runs, stopped with it."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.next_start = 0.0
        self.pause = RESTART_SECONDS
        self.stopping = False

    def keep_running(self) -> None:
        """Start the watcher, or start it again once the pause after its death has passed."""
        if self.stopping:
            return
        now = time.monotonic()
        if self.proc is not None:
            code = self.proc.poll()  # 0 as well once the arbiter reaped it as an unknown child
            if code is None:
                return
            ran = now - self.started_at
            self.pause = RESTART_SECONDS if ran >= HEALTHY_SECONDS else min(self.pause * 2, MAX_RESTART_SECONDS)
            log.error("the watcher (pid %d) ended (exit status %s) after %.0fs; starting it again in %.0fs",
                      self.proc.pid, code, ran, self.pause)
            self.proc, self.next_start = None, now + self.pause
        if now >= self.next_start:
            self.proc = subprocess.Popen(self.command, start_new_session=True)
            self.started_at = now
            log.info("started the watcher (pid %d)", self.proc.pid)

    def signal_stop(self) -> None:
        """Ask the watcher to stop (it finishes its batch and publishes); `wait` for it afterwards."""
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, seconds: float = STOP_SECONDS) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            log.warning("the watcher (pid %d) did not stop within %.0fs: killing it", self.proc.pid, seconds)
            self.proc.kill()
            self.proc.wait()


class WatchingArbiter(Arbiter):
    """gunicorn's arbiter, also keeping the one watcher process running."""

    def __init__(self, app: Any, watcher: WatcherProcess) -> None:
        self.watcher = watcher
        super().__init__(app)

    def manage_workers(self) -> None:
        super().manage_workers()
        self.watcher.keep_running()

    def stop(self, graceful: bool = True) -> None:
        self.watcher.signal_stop()  # it finishes its batch while the workers finish their requests
        super().stop(graceful)
        self.watcher.wait()
