"""`lookalike backup DEST`: a consistent copy taken while an indexer runs, restored and verified clean."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    POSTGRES_URL,
    REPO,
    Library,
    catalog_of,
    drop_everything,
    env_for,
    make_settings,
    postgres_answers,
    run_index,
    search,
)

from lookalike.cli import cli
from search_api import create_app
from storage.backup import MARKER

TUNING = {"model": {"batch_size": 4}, "indexer": {"commit_every": 4, "decode_workers": 2}}


def images_in(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])


def exact_similar(vectors: dict[int, np.ndarray], image_id: int, k: int) -> list[int]:
    ids = np.asarray(sorted(vectors))
    matrix = np.stack([vectors[int(i)] for i in ids])
    scores = matrix @ vectors[image_id]
    order = [int(ids[j]) for j in np.argsort(-scores, kind="stable") if ids[j] != image_id]
    return order[:k]


@pytest.mark.subprocess
def test_backup_during_an_indexer_run_restores_and_answers_as_before(tmp_path: Path, tf1_module: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    first, second = Library(tmp_path / "first", seed=1), Library(tmp_path / "second", seed=2)
    first.add(40)
    second.add(400)
    data = tmp_path / "data"
    settings = make_settings(data, tf1_module, **TUNING)
    run_index(settings, first.root)
    env = {**env_for(data, tf1_module), "LOOKALIKE_MODEL__BATCH_SIZE": "4", "LOOKALIKE_INDEXER__COMMIT_EVERY": "4",
           "LOOKALIKE_INDEXER__DECODE_WORKERS": "2", "LOOKALIKE_INDEXER__PUBLISH_EVERY_SECONDS": "0.5"}
    log = tmp_path / "indexer.log"
    with open(log, "wb") as out:
        indexer = subprocess.Popen([sys.executable, "-m", "lookalike", "index", str(first.root), str(second.root)],
                                   env={**os.environ, **env, "PYTHONPATH": str(REPO)}, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=REPO)
    backup = tmp_path / "backup"
    try:
        deadline = time.monotonic() + 120
        while images_in(data / "catalog.db") < 80:  # well into the run, with batches still coming
            assert indexer.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the indexer made no progress"
            time.sleep(0.1)
        result = CliRunner().invoke(cli, ["backup", "--json", str(backup)], env=env)
        assert result.exit_code == 0, result.output
        still_running = indexer.poll() is None
        assert indexer.wait(300) == 0, log.read_text(errors="replace")
    finally:
        if indexer.poll() is None:
            indexer.send_signal(signal.SIGKILL)
            indexer.wait()
    assert still_running, "the indexer finished before the backup did: nothing was proven"
    summary = json.loads(result.stdout)
    levelled = [r.getMessage() for r in caplog.records if "out of step" in r.getMessage()]
    print(f"\nbackup during the run: {summary['images']} images, {summary['seconds']:.2f}s; {levelled or 'in step'}")
    assert 80 <= summary["images"] < 440 and summary["vectors"] == summary["images"]
    assert (backup / MARKER).is_file() and not [p for p in backup.iterdir() if p.name.startswith(".")]

    # Restore: stop nothing here (the source stays as it is), copy into a new data dir, verify it.
    restored = tmp_path / "restored"
    shutil.copytree(backup, restored)
    restored_env = env_for(restored, tf1_module)
    checked = CliRunner().invoke(cli, ["verify"], env=restored_env)
    assert checked.exit_code == 0 and checked.output.strip().endswith("ok"), checked.output

    # Every image the backup holds is the source's (same files, content and labels) and answers queries as
    # the catalog it was copied from says: its exact neighbours, and itself first when searched by its file.
    restored_settings = make_settings(restored, tf1_module, **TUNING)
    source, copy = catalog_of(settings), catalog_of(restored_settings)
    try:
        ids = copy.image_ids().tolist()
        assert len(ids) == summary["images"]
        assert copy.get_images(ids) == source.get_images(ids)
        vectors = {i: copy.embedding(i) for i in ids}
    finally:
        source.close()
        copy.close()
    client = create_app(restored_settings).test_client()
    for image_id in ids:
        response = client.get(f"/api/v1/images/{image_id}/similar?k=5")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert [h["id"] for h in response.get_json()["results"]] == exact_similar(vectors, image_id, 5)
    for image_id in ids[:: max(1, len(ids) // 10)]:
        path = Path(client.get(f"/api/v1/images/{image_id}").get_json()["path"])
        hits = search(client, path.read_bytes(), "?k=3").get_json()["results"]
        assert hits[0]["id"] == image_id and hits[0]["score"] > 0.999

    # A second backup replaces the first; a folder holding other files is refused.
    again = CliRunner().invoke(cli, ["backup", str(backup)], env=env)
    assert again.exit_code == 0, again.output
    assert "backed up 440 images" in again.output
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"keep me")
    refused = CliRunner().invoke(cli, ["backup", str(other)], env=env)
    assert refused.exit_code == 1 and "not empty" in refused.output and "Traceback" not in refused.output
    assert sorted(p.name for p in other.iterdir()) == ["holiday.jpg"]


def test_backup_of_a_postgresql_catalog_copies_the_index_and_says_to_use_pg_dump(
        tmp_path: Path, tf1_module: Path, colour_library: Path) -> None:
    if not postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_URL}")
    drop_everything(POSTGRES_URL)
    try:
        settings = make_settings(tmp_path / "data", tf1_module, storage={"database_url": POSTGRES_URL})
        run_index(settings, colour_library)
        env = {**env_for(tmp_path / "data", tf1_module), "LOOKALIKE_STORAGE__DATABASE_URL": POSTGRES_URL}
        result = CliRunner().invoke(cli, ["backup", str(tmp_path / "backup")], env=env)
        assert result.exit_code == 0, result.output
        assert "pg_dump" in result.stderr and "PostgreSQL" in result.stderr
        manifest = json.loads((tmp_path / "backup" / "index" / "manifest.json").read_text())
        assert manifest["count"] == 14 and (tmp_path / "backup" / "index" / manifest["file"]).is_file()
        assert not (tmp_path / "backup" / "catalog.db").exists()
    finally:
        drop_everything(POSTGRES_URL)
