"""Every process has an owner: `lookalike index` stops within seconds on Ctrl-C or SIGTERM even when a
decode worker is stuck (keeping what it committed), and after `kill -9` no worker or helper of
the run is left behind.

A worker is made to hang for real with the `file-read` fault point in stall mode: the worker
process stops before reading a file and never goes on, as a read from a share that hangs would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    BLUE,
    RED,
    RUN_MARKER_ENV,
    catalog_of,
    colour_image,
    kill_marked,
    make_settings,
    marked_processes,
    run_index,
    subprocess_env,
    wait_for,
    wait_until_gone,
    write_image,
)

from indexer.prepare import PrepareConfig, _ready, close_decode_pool, decode_pool
from storage.faults import ACTION_ENV, AFTER_ENV, POINT_ENV
from storage.vector_index import IndexStore

pytestmark = pytest.mark.subprocess

FILES = 16
STOP_SECONDS = 10  # the promise is "a few seconds": a 2 s grace for the stuck worker, then commit and publish


@pytest.fixture
def marker() -> Iterator[str]:
    value = uuid.uuid4().hex
    yield value
    kill_marked(value)  # nothing outlives the test, whatever it found


def _library(root: Path) -> Path:
    for i in range(FILES):
        write_image(root / f"img{i:02d}.png", colour_image((RED, BLUE)[i % 2], seed=i, accent=(20 * i, 90, 40)))
    return root.resolve()


def _start(library: Path, data: Path, tf1_module: Path, marker: str, log: Path, stall_after: int) -> subprocess.Popen:
    env = subprocess_env(data, tf1_module, TF_CPP_MIN_LOG_LEVEL="3", **{
        RUN_MARKER_ENV: marker, POINT_ENV: "file-read", AFTER_ENV: str(stall_after), ACTION_ENV: "stall",
        "LOOKALIKE_INDEXER__DECODE_IN_PROCESSES": "true", "LOOKALIKE_INDEXER__DECODE_WORKERS": "2",
        "LOOKALIKE_INDEXER__COMMIT_EVERY": "2", "LOOKALIKE_MODEL__BATCH_SIZE": "2"})
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "lookalike", "index", str(library)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_request_finishes_within_seconds_with_a_stuck_worker(
    tmp_path: Path, tf1_module: Path, marker: str, signum: signal.Signals
) -> None:
    library, data, log = _library(tmp_path / "library"), tmp_path / "data", tmp_path / "index.log"
    settings = make_settings(data, tf1_module)
    proc = _start(library, data, tf1_module, marker, log, stall_after=3)  # each worker hangs on its third file
    try:
        wait_for(lambda: log.read_text(errors="replace").count("stalls here") == 2 or proc.poll() is not None,
                 seconds=180, what="both decode workers to hang")
        assert proc.poll() is None, log.read_text(errors="replace")
        wait_for(lambda: catalog_of(settings).count_images() >= 2, seconds=60, what="a first commit")
        committed = catalog_of(settings).count_images()
        asked = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(60)
        took = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    print(f"\nstopped {took:.1f} s after {signum.name} with two decode workers hung")
    assert code == 0 and took < STOP_SECONDS, output
    assert "stopped early: everything above is saved" in output and "Traceback" not in output
    catalog = catalog_of(settings)
    kept = catalog.count_images()
    catalog.close()
    assert committed <= kept < FILES
    manifest = IndexStore(data / "index").manifest()
    assert manifest is not None and manifest.count == kept  # what was done is searchable
    assert wait_until_gone(marker, 5) == []  # the hung workers were stopped too

    rest, _ = run_index(settings, library)  # the next run resumes
    assert rest.indexed == FILES - kept and rest.unchanged == kept


def test_kill_9_of_the_indexer_leaves_no_process_behind(tmp_path: Path, tf1_module: Path, marker: str) -> None:
    library, log = _library(tmp_path / "library"), tmp_path / "index.log"
    proc = _start(library, tmp_path / "data", tf1_module, marker, log, stall_after=2)
    try:
        wait_for(lambda: "stalls here" in log.read_text(errors="replace") or proc.poll() is not None,
                 seconds=180, what="a decode worker at work")
        assert proc.poll() is None, log.read_text(errors="replace")
        before = marked_processes(marker)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = wait_until_gone(marker, 5)
    print(f"\nprocesses of the run before kill -9: {len(before)}, left after it: {len(left)}")
    assert len(before) >= 3  # the indexer, its decode workers (and multiprocessing's resource tracker)
    assert left == []


def test_ctrl_c_while_decode_workers_start_is_left_to_the_indexer(tmp_path: Path) -> None:
    """Ctrl-C reaches the indexer's whole process group: decode workers still starting Python must not
    die of it (the indexer stops them itself after its current batch), or the pool breaks."""
    config = PrepareConfig(database_url=f"sqlite:///{tmp_path / 'catalog.db'}", image_size=32,
                           max_pixels=10_000_000, data_dir=tmp_path, thumbnail_size=0)
    pool, _ = decode_pool(config, 2, processes=True)
    try:
        workers = list(pool._processes.values())  # type: ignore[attr-defined]
        assert len(workers) == 2
        for _ in range(10):  # over the first half second: the interpreters are starting, then importing
            for worker in workers:
                if worker.pid is not None:
                    os.kill(worker.pid, signal.SIGINT)
            time.sleep(0.05)
        assert all(pool.submit(_ready).result(timeout=120) for _ in range(4))
        assert all(worker.is_alive() for worker in workers)
    finally:
        close_decode_pool(pool, stop_workers=True)
