"""Decode bombs against a real `lookalike serve` with its default limits: each costs the serving process
little CPU and memory, and four at once leave /healthz answering."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import (
    ServerProcess,
    jpeg_scan_bomb,
    make_colour_library,
    make_settings,
    png_pixel_bomb,
    png_text_bomb,
    run_index,
    subprocess_env,
)

pytestmark = pytest.mark.gunicorn

CPU_SECONDS = 2.0  # most CPU time one upload may cost the serving process
EXTRA_RSS = 256 * 2**20  # most memory it may add to it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bombs")
    settings = make_settings(root / "data", tf1_module)
    assert run_index(settings, make_colour_library(root / "library"))[0].indexed == 14
    with ServerProcess(subprocess_env(root / "data", tf1_module), root / "serve.log") as served:
        yield served
    assert "Traceback" not in served.output()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"text": png_text_bomb(31_000_000), "scans": jpeg_scan_bomb(7000, 50), "pixels": png_pixel_bomb(7000, 7000)}


def post(port: int, body: bytes, timeout: float = 60) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/api/v1/search?k=2", body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Watch:
    """Peak resident memory of one process, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.start_rss = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize(("name", "status"), [("text", 422), ("scans", 422), ("pixels", 200)])
def test_one_bomb_costs_the_serving_process_little(server: ServerProcess, bombs: dict[str, bytes], name: str,
                                                   status: int) -> None:
    (worker,) = server.worker_pids()
    with Watch(worker) as watch:
        before = watch.cpu()
        assert post(server.port, bombs[name]) == status
        spent = watch.cpu() - before
    assert spent < CPU_SECONDS, f"{spent:.2f} s of CPU"
    assert watch.peak - watch.start_rss < EXTRA_RSS, f"+{(watch.peak - watch.start_rss) / 2**20:.0f} MiB"


def test_four_bombs_at_once_leave_healthz_answering(server: ServerProcess, bombs: dict[str, bytes]) -> None:
    (worker,) = server.worker_pids()
    statuses: list[int] = []
    senders = [threading.Thread(target=lambda b=bomb: statuses.append(post(server.port, b)))
               for bomb in (bombs["pixels"], bombs["pixels"], bombs["text"], bombs["scans"])]
    probes: list[float] = []
    with Watch(worker) as watch:
        for sender in senders:
            sender.start()
        while any(s.is_alive() for s in senders):
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
            probes.append(time.monotonic() - started)
            time.sleep(0.05)
        for sender in senders:
            sender.join(60)
    assert sorted(statuses) == [200, 200, 422, 422]
    assert len(probes) >= 3 and max(probes) < 1, probes
    assert watch.peak - watch.start_rss < EXTRA_RSS, f"+{(watch.peak - watch.start_rss) / 2**20:.0f} MiB"
