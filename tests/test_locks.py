"""The data directory's locks: one writer at a time, a watcher that keeps index runs out, and waiting for them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO, env_for

from lookalike.cli import cli
from storage.lock import WRITER_LOCK, LockedError, holder, index_run_lock, watch_lock, watcher_pid, writer_lock

HOLD = """
import sys, time
from pathlib import Path
from storage.lock import watch_lock, writer_lock
lock = {"watch": watch_lock, "writer": writer_lock}[sys.argv[2]]
with lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold_in_another_process(data_dir: Path, which: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir), which, str(seconds)], text=True,
                            stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_writer_waits_a_bounded_time_then_names_the_holder(tmp_path: Path) -> None:
    with writer_lock(tmp_path):
        assert holder(tmp_path, WRITER_LOCK) == str(os.getpid())
        started = time.monotonic()
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"), writer_lock(tmp_path, wait_seconds=0.3):
            pass
        assert 0.25 < time.monotonic() - started < 2
    assert holder(tmp_path, WRITER_LOCK) is None


def test_a_waiting_writer_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    got = threading.Event()

    def wait_for_it() -> None:
        with writer_lock(tmp_path, wait_seconds=5):
            got.set()

    with writer_lock(tmp_path):
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.3)
        assert not got.is_set()
    waiter.join(5)
    assert got.is_set()


@pytest.mark.subprocess
def test_an_index_run_is_refused_while_a_watcher_runs_and_waits_with_wait(tmp_path: Path, colour_library: Path,
                                                                         tf1_module: Path) -> None:
    data = tmp_path / "data"
    watcher = hold_in_another_process(data, "watch", 3)
    try:
        assert watcher_pid(data) == str(watcher.pid)
        with pytest.raises(LockedError, match=f"pid {watcher.pid}, a watcher"), index_run_lock(data):
            pass
        with pytest.raises(LockedError), watch_lock(data):  # one watcher per data directory
            pass
        refused = CliRunner().invoke(cli, ["index", str(colour_library)], env=env_for(data, tf1_module))
        assert refused.exit_code == 1 and "another lookalike indexer" in refused.output and "--wait" in refused.output
        started = time.monotonic()
        waited = CliRunner().invoke(cli, ["index", "--wait", str(colour_library)], env=env_for(data, tf1_module))
        assert waited.exit_code == 0, waited.output
        assert "waiting for the watcher" in waited.stderr and time.monotonic() - started > 1
    finally:
        watcher.kill()
        watcher.wait()
