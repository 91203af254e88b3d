"""Damage is found, reported and never served: a NaN vector in the catalog, garbled bytes in a Flat index
file, garbled pages of catalog.db. Each is made for real on real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import RED, assert_problem, catalog_of, colour_image, env_for, free_port, jpeg, make_settings, search

from indexer.model import configured_model_id
from indexer.settings import Settings
from lookalike.cli import cli
from search_api import create_app
from search_api.current import service_of
from storage.catalog import FileRef, NewImage
from storage.sync import open_index
from storage.vector_index import SCORE_LIMIT, IndexDamagedError, IndexStore

DIM, COUNT = 512, 300  # a Flat index file of 600 kB: bytes 100000-150000 are vectors


def garble(path: Path, start: int, end: int, seed: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes())


def garble_pages(db: Path, pages: list[int]) -> None:
    """Overwrite whole pages of a SQLite file (after folding the WAL into it), as a failing disk would."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    for n, page in enumerate(pages):
        garble(db, (page - 1) * page_size, page * page_size, seed=n)


@pytest.fixture
def synthetic(tmp_path: Path, tf1_module: Path) -> Iterator[tuple[Settings, np.ndarray]]:
    """A catalog of 300 unit vectors of 512 dimensions (files that need not exist) and its published Flat index."""
    settings = make_settings(tmp_path / "data", tf1_module)
    mid = configured_model_id(settings.model)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(COUNT, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = catalog_of(settings)
    try:
        ids, _ = catalog.apply([NewImage(f"{i:064x}", 8, 8, "PNG", mid, vectors[i], ((1, 0.9),)) for i in range(COUNT)],
                               [FileRef(f"/lib/{i}.png", "/lib", 10, 1, f"{i:064x}") for i in range(COUNT)])
        assert ids == list(range(1, COUNT + 1))
        open_index(catalog, IndexStore(settings.storage.data_dir / "index"), mid, publish_repairs=True)
    finally:
        catalog.close()
    yield settings, vectors


def exact_neighbours(vectors: np.ndarray, image_id: int, k: int) -> list[int]:
    scores = vectors @ vectors[image_id - 1]
    scores[image_id - 1] = -np.inf
    return [int(i) + 1 for i in np.argsort(-scores, kind="stable")[:k]]


def verify_json(runner: CliRunner, settings: Settings, tf1_module: Path) -> dict[str, object]:
    result = runner.invoke(cli, ["verify", "--json"], env=env_for(settings.storage.data_dir, tf1_module))
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)


def test_garbled_flat_index_is_reported_and_never_served(synthetic: tuple[Settings, np.ndarray], runner: CliRunner,
                                                         tf1_module: Path) -> None:
    settings, vectors = synthetic
    store = IndexStore(settings.storage.data_dir / "index")
    manifest = store.manifest()
    assert manifest is not None and manifest.factory == "Flat"
    path = store.directory / manifest.file
    assert path.stat().st_size > 150_000
    garble(path, 100_000, 150_000)

    # Searched as it is, the damaged file answers impossible scores: the index refuses to hand them out.
    damaged = store.load(manifest, mmap=True)
    assert damaged is not None
    with pytest.raises(IndexDamagedError, match="outside"):
        damaged.search(vectors[:50], 5)

    report = verify_json(runner, settings, tf1_module)
    kinds = {d["kind"]: d for d in report["damage"]}
    assert {"index_checksum", "index_vectors_differ"} <= set(kinds), kinds
    assert 0 < kinds["index_vectors_differ"]["count"] < COUNT and kinds["index_vectors_differ"]["ids"]
    text = runner.invoke(cli, ["verify"], env=env_for(settings.storage.data_dir, tf1_module)).output
    assert "PROBLEM [index_vectors_differ]" in text and "lookalike rebuild" in text
    print(f"\nverify on a garbled Flat index: {[(d['kind'], d['count']) for d in report['damage']]}")

    # A server maps the file (no checksum read): it notices the impossible scores, rebuilds in memory,
    # and answers exactly; it never writes the index.
    client = create_app(settings).test_client()
    for image_id in (1, 50, 60, 70, 200, 300):
        response = client.get(f"/api/v1/images/{image_id}/similar?k=5")
        assert response.status_code == 200, response.get_data(as_text=True)
        hits = response.get_json()["results"]
        assert all(-SCORE_LIMIT <= h["score"] <= SCORE_LIMIT for h in hits)
        assert [h["id"] for h in hits] == exact_neighbours(vectors, image_id, 5)
    assert store.manifest() == manifest
    # The CLI reads the file whole: the checksum gives it away, and it answers from a rebuilt index too.
    similar = runner.invoke(cli, ["similar", "60", "--json", "-k", "3"], env=env_for(settings.storage.data_dir,
                                                                                       tf1_module))
    assert similar.exit_code == 0, similar.output
    assert [h["id"] for h in json.loads(similar.stdout)["queries"][0]["results"]] == exact_neighbours(vectors, 60, 3)
    # A writer publishes a sound generation from the catalog.
    assert runner.invoke(cli, ["rebuild"], env=env_for(settings.storage.data_dir, tf1_module)).exit_code == 0
    assert runner.invoke(cli, ["verify"], env=env_for(settings.storage.data_dir, tf1_module)).exit_code == 0


def test_nan_vector_in_the_catalog_is_reported_and_never_served(indexed: Settings, runner: CliRunner,
                                                                tf1_module: Path, colour_library: Path) -> None:
    db = indexed.storage.data_dir / "catalog.db"
    with sqlite3.connect(db) as conn:
        dim = len(conn.execute("SELECT embedding FROM images WHERE id = 3").fetchone()[0]) // 4
        conn.execute("UPDATE images SET embedding = ? WHERE id = 3", (np.full(dim, np.nan, "<f4").tobytes(),))
    env = env_for(indexed.storage.data_dir, tf1_module) | {"LOOKALIKE_INDEXER__DECODE_IN_PROCESSES": "false"}

    report = verify_json(runner, indexed, tf1_module)
    kinds = {d["kind"]: d for d in report["damage"]}
    assert kinds["vectors_not_finite"]["ids"] == [3] and kinds["vectors_not_finite"]["count"] == 1
    assert "--reindex" in kinds["vectors_not_finite"]["fix"]
    print(f"\nverify with a NaN catalog vector: {[(d['kind'], d['count']) for d in report['damage']]}")

    client = create_app(indexed).test_client()
    assert_problem(client.get("/api/v1/images/3/similar"), 503, "damaged_vector", "image 3")
    body = search(client, jpeg(colour_image(RED, seed=5)), "?k=20").get_json()
    assert body["results"] and all(-1 <= hit["score"] <= 1 for hit in body["results"])
    # A rebuilt index leaves the damaged vector out (and stays consistent); the reindex repairs it for good.
    assert runner.invoke(cli, ["rebuild"], env=env).exit_code == 0
    again = verify_json(runner, indexed, tf1_module)
    assert [d["kind"] for d in again["damage"]] == ["vectors_not_finite"]
    assert runner.invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0  # consistent: no rebuild loop
    assert runner.invoke(cli, ["index", "--reindex", str(colour_library)], env=env).exit_code == 0
    assert runner.invoke(cli, ["verify"], env=env).exit_code == 0


READ_COMMANDS = [["stats"], ["similar", "5"], ["search", "{image}"], ["duplicates"], ["errors"], ["verify"],
                 ["rebuild"], ["index", "{library}"]]


def run_everywhere(runner: CliRunner, settings: Settings, tf1_module: Path, library: Path) -> dict[str, object]:
    fill = {"image": str(library / "red" / "red0.jpg"), "library": str(library)}
    out = {}
    for args in READ_COMMANDS:
        env = env_for(settings.storage.data_dir, tf1_module) | {"LOOKALIKE_INDEXER__DECODE_IN_PROCESSES": "false"}
        result = runner.invoke(cli, [a.format(**fill) for a in args], env=env)
        assert "Traceback" not in result.output and not isinstance(result.exception, sqlite3.Error), args
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        out[args[0]] = result
    return out


def test_garbled_catalog_header_pages_every_command_says_what_is_damaged(
        indexed: Settings, runner: CliRunner, tf1_module: Path, colour_library: Path) -> None:
    db = indexed.storage.data_dir / "catalog.db"
    garble_pages(db, [2, 3, 4, 5, 6])
    results = run_everywhere(runner, indexed, tf1_module, colour_library)
    for name, result in results.items():
        output = " ".join(result.output.split())
        assert result.exit_code == 1, (name, result.output)
        assert f"the catalog {db} is damaged" in output and "lookalike backup" in output, (name, output)
    report = verify_json(runner, indexed, tf1_module)
    assert [d["kind"] for d in report["damage"]] == ["database"]

    # A server still boots, and says why it is not ready.
    app = create_app(indexed)
    service_of(app).warm_up()
    assert_problem(app.test_client().get("/readyz"), 503, "catalog_damaged", str(db))


def test_garbled_catalog_data_pages_are_found_by_verify(synthetic: tuple[Settings, np.ndarray], runner: CliRunner,
                                                       tf1_module: Path, colour_library: Path) -> None:
    settings, _ = synthetic
    db = settings.storage.data_dir / "catalog.db"
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    garble_pages(db, [pages // 2, pages // 2 + 7, pages // 2 + 19, pages // 2 + 31, pages - 9])
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.DatabaseError, match="malformed"):
        conn.execute("PRAGMA integrity_check").fetchall()  # SQLite's own check gives up on these pages

    report = verify_json(runner, settings, tf1_module)
    database = [d for d in report["damage"] if d["kind"] == "database"]
    assert database and "is damaged" in database[0]["detail"] and "backup" in database[0]["fix"]
    print(f"\nverify on garbled catalog pages: {[(d['kind'], d['count']) for d in report['damage']]}")
    text = runner.invoke(cli, ["verify"], env=env_for(settings.storage.data_dir, tf1_module))
    assert text.exit_code == 1 and "PROBLEM [database]" in text.output and "Traceback" not in text.output
    run_everywhere(runner, settings, tf1_module, colour_library)
    # Queries answer, or say the catalog is damaged: never a 500, never a traceback.
    client = create_app(settings).test_client()
    for image_id in range(1, COUNT + 1, 7):
        response = client.get(f"/api/v1/images/{image_id}/similar?k=5")
        assert response.status_code in (200, 404, 503), response.get_data(as_text=True)
        if response.status_code == 503:
            assert response.get_json(force=True)["code"] == "catalog_damaged"


@pytest.mark.gunicorn
def test_serve_boots_on_a_damaged_catalog_and_readyz_says_why(indexed: Settings, tf1_module: Path) -> None:
    db = indexed.storage.data_dir / "catalog.db"
    garble_pages(db, [2, 3, 4, 5, 6])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--port", str(port)],
                            env={**os.environ, **env_for(indexed.storage.data_dir, tf1_module)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
                raise AssertionError("a server on a damaged catalog said it was ready")
            except urllib.error.HTTPError as exc:
                if exc.code == 503:
                    body = json.loads(exc.read())
                    if body["code"] != "not_ready":
                        break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "server exited"
            assert time.monotonic() < deadline, "server did not answer /readyz"
            time.sleep(0.5)
        assert body["code"] == "catalog_damaged" and str(db) in body["detail"] and "backup" in body["detail"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
