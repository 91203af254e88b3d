"""Run the API under gunicorn: each worker sizes its CPU threads, then builds its app and loads the model.

Nothing here imports TensorFlow or the app in the arbiter process: TensorFlow does not survive
a fork, and prometheus_client must see PROMETHEUS_MULTIPROC_DIR before its metrics exist.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from indexer.settings import Settings
from search_api.metrics_env import MULTIPROC_ENV
from search_api.server_file import (
    SERVER_INSTANCE,
    ServerInfo,
    local_url,
    new_instance,
    remove_server_file,
    write_server_file,
)
from search_api.worker_threads import available_cores, configure_worker_threads, threads_per_worker

log = logging.getLogger(__name__)

GRACEFUL_STOP_SECONDS = 10
# gunicorn's default access log line without %(u)s: that is the user name of `Authorization: Basic`,
# and a client sending its API key that way (`curl -u KEY:`) would write the key into the log.
ACCESS_LOG_FORMAT = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def build_worker_app(settings: Settings, cpu_threads: int | None = None, instance: str | None = None) -> Flask:
    """The app one worker serves, with the model warmed up before it takes requests."""
    if cpu_threads:
        configure_worker_threads(cpu_threads)  # before TensorFlow starts in this process
    from search_api.app import create_app
    from search_api.current import service_of

    app = create_app(settings)
    app.config[SERVER_INSTANCE] = instance  # /healthz answers it: `lookalike search` knows its server by it
    service_of(app).warm_up()
    return app


def _child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges. Runs in the arbiter, which must never create metric files
    itself (importing search_api.metrics would) and must survive any error here."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(worker.pid)
    except OSError as exc:
        log.warning("cannot drop the metrics of worker %d: %s", worker.pid, exc)


def _when_ready(server: Any) -> None:
    """Reap children this process had before it became the server (no worker exists yet).

    `lookalike demo` indexes, then execs the server in the same process: the indexer's multiprocessing
    helper ends at the exec and would stay a zombie, since its exit signal came before gunicorn listened.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        log.debug("reaped process %d, a child from before the server started", pid)


class LookalikeServer(BaseApplication):
    def __init__(self, settings: Settings, host: str, port: int, workers: int,
                 watch_command: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.watch_command = watch_command
        self.instance = new_instance()
        self.url = local_url(host, port)
        self.cpu_threads = threads_per_worker(workers)
        self.options = {
            "bind": f"{host}:{port}",
            "workers": workers,
            # gthread with a time budget per request for reading and sending (see gunicorn_worker).
            "worker_class": "search_api.gunicorn_worker.LookalikeWorker",
            "threads": settings.api.threads,
            # Loading the model takes a while; do not let the arbiter kill a worker that is warming up.
            "timeout": 300,
            # SIGTERM lets in-flight requests finish, for a few seconds at most.
            "graceful_timeout": GRACEFUL_STOP_SECONDS,
            "preload_app": False,
            "accesslog": "-",
            "access_log_format": ACCESS_LOG_FORMAT,
            "loglevel": settings.logging.level.lower(),
            "child_exit": _child_exit,
            "when_ready": self._when_ready,
            # gunicorn's control socket sits at one path per user ($HOME/.gunicorn/gunicorn.ctl): a second
            # server would take it over and remove it on exit. Signals manage lookalike's server.
            "control_socket_disable": True,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return build_worker_app(self.settings, self.cpu_threads, self.instance)

    def _when_ready(self, server: Any) -> None:
        """Listening: say where, in the data dir (the arbiter removes it when it stops)."""
        _when_ready(server)
        if self.settings.storage.data_dir.is_dir():  # none yet: nothing indexed, nothing to search
            write_server_file(self.settings.storage.data_dir, ServerInfo(self.url, os.getpid(), self.instance))

    def forget(self) -> None:
        remove_server_file(self.settings.storage.data_dir, self.instance)

    def run(self) -> None:
        """gunicorn's arbiter; with a watcher command, one that also keeps the watcher running."""
        if self.watch_command is None:
            super().run()
            return
        from search_api.watcher_process import WatcherProcess, WatchingArbiter

        try:
            WatchingArbiter(self, WatcherProcess(self.watch_command)).run()
        except RuntimeError as exc:  # as gunicorn's own run() reports a server that cannot start
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)


# glibc's M_ARENA_MAX: by default each request thread may get its own malloc arena, which under
# sustained load keeps growing a worker's memory through fragmentation; two arenas keep it flat.
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Cap glibc malloc arenas for this process and the workers it forks (unless MALLOC_ARENA_MAX is set)."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS))
    except (OSError, AttributeError):  # not glibc
        return False


def serve(settings: Settings, host: str, port: int, workers: int, watch_command: Sequence[str] | None = None) -> None:
    """Serve until stopped; metrics of all workers are gathered in a fresh temporary directory. With
    `watch_command`, the arbiter also runs that watcher (search_api.watcher_process)."""
    limit_malloc_arenas()
    if "search_api.metrics" in sys.modules:
        log.warning("metrics were created before %s was set: /metrics will show one worker only", MULTIPROC_ENV)
    metrics_dir = tempfile.mkdtemp(prefix="lookalike-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    owner = os.getpid()
    server = LookalikeServer(settings, host, port, workers, watch_command)
    log.info("serving on http://%s:%d with %d worker(s); %d CPU thread(s) per worker for TensorFlow and FAISS "
             "(%d cores); metrics in %s=%s", host, port, workers, server.cpu_threads, available_cores(),
             MULTIPROC_ENV, metrics_dir)
    try:
        server.run()
    finally:
        # Workers are forked inside run() and leave through this frame too: only the arbiter, which
        # made the directory, removes it (a worker exiting would pull it from under the others).
        if os.getpid() == owner:
            # Stopping: Ctrl-C pressed again must not cut the clean-up short (nor, once Python has put
            # its default handler back while ending, kill the process).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            server.forget()
