"""`lookalike watch` as a process: the lock against index runs, a clean stop on SIGTERM, and a kill -9
in the middle of a batch that the next start resumes from (`lookalike verify` clean)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import (
    REPO,
    RUN_MARKER_ENV,
    catalog_of,
    colour_image,
    encode,
    env_for,
    kill_marked,
    make_settings,
    wait_for,
    wait_until_gone,
)

from lookalike.cli import cli
from storage.catalog import Catalog
from storage.errors import CatalogError
from storage.faults import AFTER_ENV, POINT_ENV

pytestmark = pytest.mark.subprocess

MARKER = f"watch-processes-{os.getpid()}"


def watch_env(data: Path, model: Path, **extra: str) -> dict[str, str]:
    return {**env_for(data, model), "LOOKALIKE_INDEXER__SETTLE_SECONDS": "0.5",
            "LOOKALIKE_INDEXER__COMMIT_EVERY": "4", "LOOKALIKE_MODEL__BATCH_SIZE": "4",
            "LOOKALIKE_INDEXER__DECODE_WORKERS": "2", **extra}


def start_watch(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", RUN_MARKER_ENV: MARKER}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "lookalike", "watch", *args], env=full, stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)


def catalog_count(data: Path, model: Path) -> int:
    """Files in the catalog the watcher writes; 0 before it made one (this test must not create it: two
    processes creating the same schema at once would race)."""
    try:
        catalog = Catalog(make_settings(data, model).storage.resolved_database_url(), create=False)
    except CatalogError:
        return 0
    try:
        return catalog.count_files()
    except CatalogError:
        return 0
    finally:
        catalog.close()


def photos(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour = ((seed + i) * 37 % 256, (seed + i) * 91 % 256, 120)
        (folder / f"p{seed + i:03d}.png").write_bytes(encode(colour_image(colour, seed=seed + i), "PNG"))
    return folder


def test_watch_keeps_index_runs_out_and_stops_cleanly_on_sigterm(tmp_path: Path, tf1_module: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "watch.log"
    root = photos(tmp_path / "library", 3)
    env = watch_env(data, tf1_module, LOOKALIKE_INDEXER__ROOTS=str(root),
                    LOOKALIKE_INDEXER__DECODE_IN_PROCESSES="true")
    proc = start_watch(env, log)  # no PATH: indexer.roots
    try:
        wait_for(lambda: catalog_count(data, tf1_module) == 3, 180, "the first scan")
        refused = CliRunner().invoke(cli, ["index", str(root)], env=env)
        assert refused.exit_code == 1, refused.output
        assert f"pid {proc.pid}, a watcher" in refused.output and "--wait" in refused.output
        photos(root, 2, seed=10)
        wait_for(lambda: catalog_count(data, tf1_module) == 5, 60, "new photos indexed")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
        assert time.monotonic() - started < 10
        assert wait_until_gone(MARKER, 10) == []  # decode workers included
        checked = CliRunner().invoke(cli, ["verify"], env=env)
        assert checked.exit_code == 0 and checked.output.strip().endswith("ok"), checked.output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_marked(MARKER)


def test_watch_with_no_roots_says_what_to_configure(tmp_path: Path, tf1_module: Path) -> None:
    result = CliRunner().invoke(cli, ["watch"], env=watch_env(tmp_path / "data", tf1_module))
    assert result.exit_code == 2 and "indexer.roots" in result.output


def test_a_watcher_killed_mid_batch_resumes_and_verify_is_clean(tmp_path: Path, tf1_module: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "watch.log"
    root = tmp_path / "library"
    root.mkdir()
    env = watch_env(data, tf1_module)
    fault = {POINT_ENV: "catalog-committed", AFTER_ENV: "2"}
    proc = start_watch({**env, **fault}, log, str(root))
    try:
        wait_for(lambda: b"watching 1 root" in log.read_bytes(), 180, "the watcher started")
        shutil.copytree(photos(tmp_path / "camera", 20), root / "import")
        assert proc.wait(60) == -signal.SIGKILL, log.read_text()  # killed by the fault point, on its 2nd commit
        assert 0 < catalog_count(data, tf1_module) < 20
        proc = start_watch(env, log, str(root))
        wait_for(lambda: catalog_count(data, tf1_module) == 20, 90, "the next start to resume")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(20) == 0, log.read_text()
        checked = CliRunner().invoke(cli, ["verify"], env=env)
        assert checked.exit_code == 0 and checked.output.strip().endswith("ok"), checked.output
        catalog = catalog_of(make_settings(data, tf1_module))
        try:
            assert catalog.count_images() == 20
        finally:
            catalog.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_marked(MARKER)
