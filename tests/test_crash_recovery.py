"""Kill `lookalike index` with SIGKILL at every named fault point and at random moments, then recover.

Each round changes the library, starts a real `python -m lookalike index` subprocess that is
killed part-way, runs the indexer again to completion, and proves: `lookalike verify` is clean,
the catalog holds exactly the files on disk with their current content (nothing missing,
nothing twice), and every image answers a similarity query.

Rounds are of two kinds: "content" rounds add and rewrite images (the killed run embeds), and
"reorganise" rounds move, copy and delete files (the killed run commits links and removals and
publishes without loading the model, so many kills fit in a short test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from helpers import (
    REPO,
    RUN_MARKER_ENV,
    Library,
    assert_catalog_matches_files,
    env_for,
    kill_marked,
    make_settings,
    wait_until_gone,
)

from indexer.settings import Settings
from lookalike.cli import cli
from search_api import create_app
from storage.faults import AFTER_ENV, POINT_ENV, POINTS

pytestmark = pytest.mark.subprocess

FIRST_LIBRARY = 200
RANDOM_KILLS = 10
# (kind of round, fault point or "random", the hit on which to die)
PLAN = (
    [("content", "catalog-committed", 2), ("content", "index-temp-written", 1), ("content", "manifest-written", 1)]
    + [("content", "random", 0)] * 3
    + [("reorganise", point, 1) for point in POINTS[1:] for _ in range(4)]
    + [("reorganise", "catalog-committed", after) for after in (1, 2, 3, 4)]
    + [("reorganise", "random", 0)] * 6
)
RUN_TIMEOUT = 60
# Every killed run and the processes it started carry this in their environment.
RUN_MARKER = f"crash-recovery-{os.getpid()}"


@pytest.fixture
def setup(tmp_path: Path, tf1_module: Path) -> Iterator[tuple[Library, Settings, dict[str, str]]]:
    library = Library(tmp_path / "library", seed=7)
    library.add(FIRST_LIBRARY)
    data = tmp_path / "data"
    tuning = {"model": {"batch_size": 4}, "indexer": {"commit_every": 4, "decode_workers": 2}}
    settings = make_settings(data, tf1_module, **tuning)
    env = {**env_for(data, tf1_module), "LOOKALIKE_MODEL__BATCH_SIZE": "4", "LOOKALIKE_INDEXER__COMMIT_EVERY": "4",
           "LOOKALIKE_INDEXER__DECODE_WORKERS": "2",
           "LOOKALIKE_INDEXER__DECODE_IN_PROCESSES": "true"}
    yield library, settings, env


def start_index(library: Library, env: dict[str, str], log: Path, fault: dict[str, str]) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env, **fault, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
                RUN_MARKER_ENV: RUN_MARKER}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "lookalike", "index", str(library.root)], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def kill_at_random(library: Library, env: dict[str, str], log: Path, rng: np.random.Generator, kind: str) -> int:
    """SIGKILL at a random moment: for content rounds, while starting up or while embedding and
    committing; a reorganise run is short, so anywhere in its first second."""
    proc = start_index(library, env, log, {})
    started = time.monotonic()
    if kind == "reorganise":
        time.sleep(rng.uniform(0.1, 1.0))
    elif rng.random() < 0.3:
        time.sleep(rng.uniform(0.2, 3.0))
    else:
        while proc.poll() is None and b"files to index" not in log.read_bytes():
            assert time.monotonic() - started < RUN_TIMEOUT, log.read_text(errors="replace")
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.2))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(RUN_TIMEOUT)


def complete_run(env: dict[str, str], library: Library) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["index", "--json", str(library.root)], env=env)
    assert result.exit_code == 0, result.output
    checked = runner.invoke(cli, ["verify"], env=env)
    assert checked.exit_code == 0 and checked.output.strip().endswith("ok"), checked.output


def assert_every_query_answers(client: FlaskClient, ids: list[int], asked: list[int]) -> None:
    existing = set(ids)
    for image_id in asked:
        response = client.get(f"/api/v1/images/{image_id}/similar?k=5")
        assert response.status_code == 200, response.get_data(as_text=True)
        found = [hit["id"] for hit in response.get_json()["results"]]
        assert len(found) == 5 and set(found) <= existing - {image_id}


def assert_index_dir_is_clean(settings: Settings) -> None:
    names = sorted(p.name for p in (settings.storage.data_dir / "index").iterdir())
    assert len([n for n in names if n.startswith("vectors-")]) == 1 and "manifest.json" in names, names
    assert not [n for n in names if n.endswith(".tmp")], names


def test_sigkill_anywhere_then_recover(setup: tuple[Library, Settings, dict[str, str]], tmp_path: Path) -> None:
    try:
        _kill_and_recover(setup, tmp_path)
        # Decode workers and multiprocessing's resource tracker end with the indexer that was killed.
        left = wait_until_gone(RUN_MARKER, 10)
        print(f"\nprocesses left behind by {RUN_MARKER}: {len(left)}")
        assert left == []
    finally:
        kill_marked(RUN_MARKER)


def _kill_and_recover(setup: tuple[Library, Settings, dict[str, str]], tmp_path: Path) -> None:
    library, settings, env = setup
    complete_run(env, library)
    rng = np.random.default_rng(11)
    plan = [PLAN[i] for i in rng.permutation(len(PLAN))]
    kills = 0
    for round_no, (kind, point, after) in enumerate(plan):
        library.change_content() if kind == "content" else library.reorganise()
        log = tmp_path / f"run{round_no}.log"
        if point == "random":
            code = kill_at_random(library, env, log, rng, kind)
            assert code in (0, -signal.SIGKILL), log.read_text(errors="replace")
        else:
            proc = start_index(library, env, log, {POINT_ENV: point, AFTER_ENV: str(after)})
            code = proc.wait(RUN_TIMEOUT)
            assert code == -signal.SIGKILL, f"{point}#{after} was not reached:\n{log.read_text(errors='replace')}"
            assert f"fault point {point}" in log.read_text(errors="replace")
        kills += code == -signal.SIGKILL
        complete_run(env, library)
        ids = assert_catalog_matches_files(settings, library)
        assert_index_dir_is_clean(settings)
        asked = ids if round_no == len(plan) - 1 else sorted(rng.choice(ids, 30, replace=False).tolist())
        assert_every_query_answers(create_app(settings).test_client(), ids, asked)
    assert kills >= 20
    # Uploads answer too, with the model loaded in the server process.
    client = create_app(settings).test_client()
    path = library.files()[0]
    with path.open("rb") as fh:
        response = client.post("/api/v1/search?k=3", data={"image": (fh, path.name)},
                               content_type="multipart/form-data")
    assert response.status_code == 200 and response.get_json()["results"][0]["score"] > 0.99
