"""Serving quality: CPU threads per worker, metrics across gunicorn workers, new index generations under load."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    GREEN,
    RED,
    REPO,
    colour_image,
    env_for,
    free_port,
    http_search,
    jpeg,
    run_index,
    search,
    wait_for,
    wait_ready,
)

import search_api.service as service_module
from indexer.settings import Settings
from search_api import create_app
from search_api.current import service_of
from search_api.worker_threads import available_cores, threads_per_worker


def test_threads_per_worker_share_the_cores() -> None:
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(4, cores=1) == 1
    assert threads_per_worker(1, cores=6) == 6
    assert threads_per_worker(1) == available_cores()


WORKER_SCRIPT = """
import json, logging, sys
import faiss
logging.basicConfig(level=logging.INFO)
from indexer.settings import load_settings
from search_api.current import service_of
from search_api.serve import build_worker_app
assert "tensorflow" not in sys.modules  # as in a freshly forked worker
app = build_worker_app(load_settings(), cpu_threads=int(sys.argv[1]))
import tensorflow as tf
print(json.dumps({"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                  "inter": tf.config.threading.get_inter_op_parallelism_threads(),
                  "faiss": faiss.omp_get_max_threads(), "ready": service_of(app).is_ready()}))
"""


@pytest.mark.subprocess
def test_worker_sizes_threads_before_the_model_loads(tmp_path: Path, tf1_module: Path) -> None:
    env = {**os.environ, **env_for(tmp_path / "data", tf1_module), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, "3"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"intra": 3, "inter": 3, "faiss": 3, "ready": True}
    assert "TensorFlow intra-op 3, inter-op 3, FAISS OpenMP 3" in done.stderr
    assert "keeps its defaults" not in done.stderr


def _metric(base: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.gunicorn
def test_two_workers_share_cores_and_metrics(tmp_path: Path, colour_library: Path, tf1_module: Path) -> None:
    env = {**os.environ, **env_for(tmp_path / "data", tf1_module), "LOOKALIKE_API__THREADS": "2"}
    assert subprocess.run([sys.executable, "-m", "lookalike", "index", str(colour_library)], env=env,
                          capture_output=True, timeout=300).returncode == 0
    port, log_path = free_port(), tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--workers", "2", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        pattern = r"worker (\d+) CPU threads: TensorFlow intra-op (\d+), inter-op \d+, FAISS OpenMP (\d+)"
        wait_for(lambda: len(re.findall(pattern, log_path.read_text())) == 2)
        workers = re.findall(pattern, log_path.read_text())
        expected = str(threads_per_worker(2))
        assert {(t, f) for _, t, f in workers} == {(expected, expected)}
        metrics_dir = Path(re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", log_path.read_text()).group(1))
        assert metrics_dir.is_dir()

        for _ in range(6):
            assert http_search(base, colour_library / "red" / "red0.jpg", 2)["results"]
        route = {"route": "/api/v1/search", "method": "POST", "status": "200"}
        # Whichever worker answers the scrape, it reports the requests of both.
        assert _metric(base, "lookalike_http_request_duration_seconds_count", **route) == 6
        assert _metric(base, "lookalike_embed_seconds_count") == 6

        pids = {int(pid) for pid, _, _ in workers}
        assert {int(p.stem.rsplit("_", 1)[1]) for p in metrics_dir.glob("gauge_live*.db")} <= pids
        victim = pids.pop()
        wait_for(lambda: any(metrics_dir.glob(f"gauge_live*_{victim}.db")))
        os.kill(victim, signal.SIGKILL)  # the arbiter's child_exit hook drops its live gauges
        wait_for(lambda: not any(metrics_dir.glob(f"gauge_live*_{victim}.db")))
        wait_for(lambda: len(re.findall(pattern, log_path.read_text())) == 3)  # a replacement started
        assert http_search(base, colour_library / "green" / "green0.webp", 1)["results"]
        assert _metric(base, "lookalike_http_request_duration_seconds_count", **route) == 7
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not metrics_dir.exists()


def test_queries_keep_succeeding_while_a_generation_is_published(
    indexed: Settings, colour_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "RELOAD_CHECK_SECONDS", 0.0)  # look for a new generation on every query
    app = create_app(indexed)
    service_of(app).warm_up()
    query = jpeg(colour_image(RED, seed=1))
    stop = threading.Event()
    answers: list[tuple[int, int]] = []

    def keep_querying() -> None:
        client = app.test_client()
        while not stop.is_set():
            response = search(client, query, "?k=30")
            answers.append((response.status_code, len(response.get_json().get("results", []))))

    threads = [threading.Thread(target=keep_querying) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 4)
        for i in range(3):
            colour_image(GREEN, seed=90 + i).save(colour_library / f"late{i}.png")
        assert run_index(indexed, colour_library)[0].indexed == 3  # publishes the next generation
        wait_for(lambda: answers[-1][1] == 17, seconds=60)
        (colour_library / "late0.png").unlink()
        run_index(indexed, colour_library)
        wait_for(lambda: answers[-1][1] == 16, seconds=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert {status for status, _ in answers} == {200}
    assert {count for _, count in answers} == {14, 17, 16}


def test_serve_caps_malloc_arenas_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    from search_api.serve import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True  # glibc on Linux
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False
