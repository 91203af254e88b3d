"""Queries from several threads against a real HTTP server while the indexer adds and removes images
and publishes new generations; and two indexers started at once on one data directory."""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    BLUE,
    GREEN,
    RED,
    REPO,
    Library,
    assert_catalog_matches_files,
    colour_image,
    env_for,
    make_settings,
    run_index,
    write_image,
)
from werkzeug.serving import make_server

from indexer.model import configured_model_id
from indexer.settings import Settings
from search_api import create_app
from search_api.current import service_of
from storage.catalog import Catalog
from storage.vector_index import IndexStore
from storage.verify import verify

pytestmark = pytest.mark.subprocess

CLIENT_THREADS = 4
INDEXER_RUNS = 6


def multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class CatalogWatcher(threading.Thread):
    """Snapshots the catalog's image ids every few milliseconds, to know which ids existed when."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.catalog = Catalog(settings.storage.resolved_database_url())
        self.times: list[float] = []
        self.snapshots: list[frozenset[int]] = []
        self.stop = threading.Event()

    def snapshot(self) -> None:
        ids = frozenset(int(i) for ids, _ in self.catalog.iter_embeddings() for i in ids)
        self.times.append(time.monotonic())
        self.snapshots.append(ids)

    def run(self) -> None:
        while not self.stop.is_set():
            self.snapshot()
            time.sleep(0.005)
        self.snapshot()
        self.catalog.close()

    def existed_during(self, start: float, end: float) -> frozenset[int]:
        """Ids present at some moment of [start, end]: the snapshot before, those inside, the one after."""
        first = max(0, bisect.bisect_right(self.times, start) - 1)
        last = min(len(self.times), bisect.bisect_left(self.times, end) + 1)
        return frozenset().union(*self.snapshots[first:last])


class Client(threading.Thread):
    """Sends uploads, similar-image queries and stats requests until stopped; records everything."""

    def __init__(self, base: str, query: bytes, stable_ids: list[int], seed: int) -> None:
        super().__init__(daemon=True)
        self.base, self.query, self.stable_ids = base, query, stable_ids
        self.rng = np.random.default_rng(seed)
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.answers: list[tuple[float, float, list[int]]] = []
        self.generations: set[int] = set()

    def request(self) -> tuple[str, urllib.request.Request]:
        kind = ("upload", "similar", "stats")[int(self.rng.integers(0, 3))]
        if kind == "upload":
            body, content_type = multipart("image", "q.jpg", self.query)
            return kind, urllib.request.Request(f"{self.base}/api/v1/search?k=12", data=body, method="POST",
                                                headers={"Content-Type": content_type})
        if kind == "similar":
            image_id = self.stable_ids[int(self.rng.integers(0, len(self.stable_ids)))]
            return kind, urllib.request.Request(f"{self.base}/api/v1/images/{image_id}/similar?k=12")
        return kind, urllib.request.Request(f"{self.base}/api/v1/stats")

    def run(self) -> None:
        while not self.stop.is_set():
            kind, request = self.request()
            started = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    body = json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                detail = exc.read().decode(errors="replace") if isinstance(exc, urllib.error.HTTPError) else ""
                self.failures.append(f"{kind}: {exc} {detail}")
                continue
            if kind == "stats":
                self.generations.add(body["generation"])
            else:
                self.answers.append((started, time.monotonic(), [hit["id"] for hit in body["results"]]))


def colour_library(root: Path) -> None:
    for i, colour in enumerate([RED, GREEN, BLUE] * 8):
        write_image(root / "stable" / f"s{i}.png", colour_image(colour, seed=i, accent=(i * 9, 80, 255 - i * 9)))


def test_queries_during_indexer_runs_never_fail(tmp_path: Path, tf1_module: Path) -> None:
    settings = make_settings(tmp_path / "data", tf1_module)
    root = tmp_path / "library"
    colour_library(root)
    churn = Library(root / "churn", seed=3)
    churn.add(30)
    run_index(settings, root)
    catalog = Catalog(settings.storage.resolved_database_url())
    stable_ids = sorted(i for i, r in catalog.get_images(list(range(1, 200))).items() if "/stable/" in r.path)
    assert len(stable_ids) == 24
    catalog.close()

    app = create_app(settings)
    service_of(app).warm_up()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watcher = CatalogWatcher(settings)
    watcher.start()
    query = (root / "stable" / "s0.png").read_bytes()
    clients = [Client(f"http://127.0.0.1:{server.server_port}", query, stable_ids, seed) for seed in
               range(CLIENT_THREADS)]
    for client in clients:
        client.start()
    try:
        for run in range(INDEXER_RUNS):
            churn.reorganise() if run % 2 else churn.change_content()
            report, _ = run_index(settings, root)
            assert report.failed == 0
            time.sleep(1.2)  # the server checks for a new generation once a second
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(60)
        watcher.stop.set()
        watcher.join(10)
        server.shutdown()

    failures = [f for client in clients for f in client.failures]
    answers = [a for client in clients for a in client.answers]
    assert failures == []
    assert len(answers) > 50
    for started, ended, ids in answers:
        assert len(ids) == len(set(ids)) and ids
        unknown = set(ids) - watcher.existed_during(started, ended)
        assert not unknown, f"results name ids {sorted(unknown)} that did not exist during the request"
    generations = set().union(*(client.generations for client in clients))
    assert len(generations) >= 4, generations  # the server followed the indexer's new generations
    assert_catalog_matches_files(settings, Library(root, 0))
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        assert verify(catalog, IndexStore(settings.storage.data_dir / "index"),
                      configured_model_id(settings.model)).ok
    finally:
        catalog.close()


def test_second_indexer_at_once_is_refused(tmp_path: Path, tf1_module: Path) -> None:
    root = tmp_path / "library"
    Library(root, seed=5).add(150)
    data = tmp_path / "data"
    env = {**os.environ, **env_for(data, tf1_module), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "lookalike", "index", "--json", str(root)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    outputs = [proc.communicate(timeout=300) for proc in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 1], outputs
    refused = next(err.decode() for (out, err), proc in zip(outputs, (first, second), strict=True)
                   if proc.returncode == 1)
    assert "another lookalike indexer (pid" in refused and str(data) in refused and "Traceback" not in refused
    winner = next(out.decode() for (out, _), proc in zip(outputs, (first, second), strict=True)
                  if proc.returncode == 0)
    assert json.loads(winner.strip().splitlines()[-1])["indexed"] == 150
    settings = make_settings(data, tf1_module)
    assert_catalog_matches_files(settings, Library(root, 0))
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        assert verify(catalog, IndexStore(data / "index"), configured_model_id(settings.model)).ok
    finally:
        catalog.close()
