"""`lookalike serve` under process faults: workers that exit or die, reloads, stops, stray children."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from helpers import ServerProcess, free_port, http_search, subprocess_env, wait_for

from indexer.settings import Settings

pytestmark = pytest.mark.gunicorn

QUERY_TIMEOUT = 60  # a request may wait in the listen queue while a new worker loads the model


@pytest.fixture
def env(indexed: Settings, tmp_path: Path, tf1_module: Path) -> dict[str, str]:
    """The server's environment: the indexed colour library, and a HOME and TMPDIR of its own."""
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    environ = subprocess_env(indexed.storage.data_dir, tf1_module, HOME=str(tmp_path / "home"),
                             TMPDIR=str(tmp_path / "tmp"))
    environ.pop("XDG_RUNTIME_DIR", None)
    return environ


@contextmanager
def querying(base: str, image: Path) -> Iterator[list[str]]:
    """A client thread that keeps asking /healthz and searching until the block ends; yields its failures."""
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=QUERY_TIMEOUT) as r:
                    assert r.status == 200
                assert http_search(base, image, 2)["results"]
                answered[0] += 1
            except Exception as exc:  # every kind of failure is what the test counts
                failures.append(repr(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: answered[0] >= 2, 60, "the first answers")
        yield failures
        count = answered[0]
        wait_for(lambda: answered[0] >= count + 2, 60, "answers after the fault")
    finally:
        stop.set()
        thread.join(QUERY_TIMEOUT + 10)
    assert not thread.is_alive()


def metrics_dir(server: ServerProcess) -> Path:
    match = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", server.output())
    assert match, server.output()
    return Path(match.group(1))


def assert_stopped_cleanly(server: ServerProcess, status: int, metrics: Path) -> None:
    assert status == 0, server.output()
    assert "Traceback" not in server.output()
    assert not metrics.exists()
    left = [pid for pid in server.seen if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {left}"


def test_a_worker_that_exits_or_dies_is_replaced(env: dict[str, str], tmp_path: Path,
                                                 colour_library: Path) -> None:
    with ServerProcess(env, tmp_path / "serve.log", workers=2) as server:
        metrics = metrics_dir(server)
        for sig, lost in ((signal.SIGTERM, 0), (signal.SIGKILL, 1)):
            with querying(server.base, colour_library / "red" / "red0.jpg") as failures:
                victim = min(server.worker_pids())
                os.kill(victim, sig)
                wait_for(lambda v=victim: v not in server.worker_pids() and len(server.worker_pids()) == 2, 60,
                         "a replacement worker")
            # A worker that finishes its requests loses none; one killed loses at most the one it was
            # answering (the client has one request in flight at a time).
            assert len(failures) <= lost, (sig, failures)
        assert metrics.is_dir()
        status = server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server, status, metrics)


def test_the_only_worker_terminated_is_replaced(env: dict[str, str], tmp_path: Path, colour_library: Path) -> None:
    with ServerProcess(env, tmp_path / "serve.log", workers=1) as server:
        metrics = metrics_dir(server)
        with querying(server.base, colour_library / "blue" / "deep" / "blue0.png") as failures:
            (victim,) = server.worker_pids()
            os.kill(victim, signal.SIGTERM)
            wait_for(lambda: server.worker_pids() not in (set(), {victim}), 60, "a replacement worker")
        assert not failures
        status = server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server, status, metrics)


def test_hangup_reloads_the_workers_without_failing_a_request(env: dict[str, str], tmp_path: Path,
                                                              colour_library: Path) -> None:
    with ServerProcess(env, tmp_path / "serve.log", workers=2) as server:
        metrics = metrics_dir(server)
        with querying(server.base, colour_library / "green" / "green0.webp") as failures:
            old = server.worker_pids()
            os.kill(server.proc.pid, signal.SIGHUP)
            wait_for(lambda: len(server.worker_pids()) == 2 and not server.worker_pids() & old, 90,
                     "two new workers")
        assert not failures, failures[:3]
        status = server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server, status, metrics)


def test_ctrl_c_stops_the_server_and_its_workers(env: dict[str, str], tmp_path: Path) -> None:
    with ServerProcess(env, tmp_path / "serve.log", workers=2) as server:
        metrics = metrics_dir(server)
        status = server.stop(signal.SIGINT, group=True)  # a terminal sends Ctrl-C to every process of the job
    assert_stopped_cleanly(server, status, metrics)



# Moments after the workers start booting (importing the app and TensorFlow, loading the model). A
# signal handler that raises lands wherever the worker is, native code included (pydantic's schema
# builder, TensorFlow), which cannot unwind from there; an impatient user presses Ctrl-C again and
# again, so each round sends it every few milliseconds until the server is gone.
BOOT_MOMENTS = (0.3, 1.5, 3.0, 5.0, 7.0)
CTRL_C_EVERY = 0.02


def _boot_log_says(log: Path, text: str, count: int) -> Callable[[], bool]:
    return lambda: log.read_text(errors="replace").count(text) == count


def test_ctrl_c_while_the_workers_boot_stops_the_server_cleanly(env: dict[str, str], tmp_path: Path) -> None:
    for moment in BOOT_MOMENTS:
        log = tmp_path / f"serve-{moment}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--host", "127.0.0.1",
                                     "--port", str(free_port()), "--workers", "2"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(_boot_log_says(log, "Booting worker", 2), 60, "two booting workers")
            time.sleep(moment)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    break
                time.sleep(CTRL_C_EVERY)
            status = proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        output = log.read_text(errors="replace")
        assert status == 0, (moment, output)
        for sign in ("Traceback", "Exception ignored", "Fatal Python error", "failed to boot"):
            assert sign not in output, (moment, output)

# Leaves an exited child behind, then becomes the server: as `lookalike demo` does when the indexer's
# multiprocessing helper process ends at the exec.
EXEC_AFTER_A_CHILD = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "pass"])
time.sleep(2)
os.execv(sys.executable, [sys.executable, "-m", "lookalike", *sys.argv[1:]])
"""


def test_children_inherited_from_before_the_server_are_reaped(env: dict[str, str], tmp_path: Path) -> None:
    with ServerProcess(env, tmp_path / "serve.log", python_args=("-c", EXEC_AFTER_A_CHILD)) as server:
        arbiter = psutil.Process(server.proc.pid)

        def zombies() -> list[int]:
            return [c.pid for c in arbiter.children() if c.status() == psutil.STATUS_ZOMBIE]

        wait_for(lambda: not zombies(), 10, "the exited child to be reaped")
        status = server.stop(signal.SIGTERM)
    assert status == 0


def test_no_control_socket_is_shared_with_other_servers(env: dict[str, str], tmp_path: Path) -> None:
    """gunicorn's control socket lives at one path per user: two servers would remove each other's."""
    with ServerProcess(env, tmp_path / "serve.log") as server:
        assert server.stop(signal.SIGTERM) == 0
    assert not (tmp_path / "home" / ".gunicorn").exists()


def test_a_model_that_cannot_load_leaves_the_server_up_saying_why(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "moved-module"
    env = {**env, "LOOKALIKE_MODEL__HANDLE": str(missing)}
    with ServerProcess(env, tmp_path / "serve.log", probe="/healthz") as server:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{server.base}/readyz", timeout=30)
        assert answer.value.code == 503
        body = json.loads(answer.value.read())
        assert body["code"] == "model_unavailable" and str(missing) in body["detail"]
        assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.output()
