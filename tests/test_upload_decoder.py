"""Uploads decoded in child processes: the same pixels as in-process, CPU and memory limits that end a
decode (and replace its process), a bounded wait for a free decoder, and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest
from helpers import BLUE, RED, REPO, colour_image, encode, jpeg, png_pixel_bomb, wait_for

from indexer.images import ImageRejected, decode_image
from search_api.busy import ServerBusy
from search_api.upload_decoder import DecodePool, DecodeRequest

pytestmark = pytest.mark.subprocess

REQUEST = DecodeRequest(64, 50_000_000, "api.max_upload_pixels")
PIXEL_BOMB = png_pixel_bomb(7000, 7000)  # allowed (49 MP), and +350 MB and 0.6 s of CPU to decode


def children(pool_owner: int = os.getpid()) -> list[psutil.Process]:
    return [c for c in psutil.Process(pool_owner).children() if "search_api.upload_decoder" in " ".join(c.cmdline())]


@pytest.fixture
def pool_factory() -> Iterator[callable]:
    pools: list[DecodePool] = []

    def make(processes: int = 2, cpu_seconds: float = 2.0, memory_mb: int = 1024, wait: float = 30) -> DecodePool:
        pool = DecodePool(processes, cpu_seconds, memory_mb, wait)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
    wait_for(lambda: not children(), 10, "the decode processes to end")


def test_pixels_and_rejections_are_those_of_an_in_process_decode(pool_factory: callable) -> None:
    pool = pool_factory()
    pool.start()
    for data in (jpeg(colour_image(RED, seed=2)), encode(colour_image(BLUE, (300, 100)), "PNG")):
        expected = decode_image(data, 64, 50_000_000).pixels
        assert np.array_equal(pool.decode(data, REQUEST), expected)
    for data, kind in ((b"not an image at all", "not_image"), (jpeg(colour_image(RED))[:200], "corrupt")):
        with pytest.raises(ImageRejected) as rejected:
            pool.decode(data, REQUEST)
        assert rejected.value.kind == kind
    assert len(children()) == 2
    assert all(c.nice() > os.nice(0) for c in children())  # below the model's priority


def test_a_decode_over_its_cpu_time_is_ended_and_its_process_replaced(pool_factory: callable) -> None:
    pool = pool_factory(processes=1, cpu_seconds=0.2)
    good = jpeg(colour_image(RED))
    pool.decode(good, REQUEST)
    (before,) = children()
    with pytest.raises(ImageRejected, match="more than 0.2 s of CPU time") as rejected:
        pool.decode(PIXEL_BOMB, REQUEST)
    assert rejected.value.kind == "too_costly"
    assert not before.is_running() or before.status() == psutil.STATUS_ZOMBIE
    assert pool.decode(good, REQUEST).shape == (64, 64, 3)  # a new process took over
    assert [c.pid for c in children()] != [before.pid]


def test_a_decode_over_its_memory_is_refused_and_the_pool_goes_on(pool_factory: callable) -> None:
    pool = pool_factory(processes=1, memory_mb=100)
    with pytest.raises(ImageRejected) as rejected:
        pool.decode(PIXEL_BOMB, REQUEST)
    assert rejected.value.kind == "too_many_pixels"
    assert pool.decode(jpeg(colour_image(RED)), REQUEST).shape == (64, 64, 3)


def test_a_large_allowed_image_leaves_no_memory_behind(pool_factory: callable) -> None:
    pool = pool_factory(processes=1)
    pool.decode(jpeg(colour_image(RED)), REQUEST)
    (child,) = children()
    idle = child.memory_info().rss
    assert pool.decode(PIXEL_BOMB, REQUEST).shape == (64, 64, 3)  # allowed: it is under the pixel limit
    assert child.memory_info().rss < idle + 64 * 2**20


def test_waiting_for_a_free_decoder_is_bounded(pool_factory: callable) -> None:
    pool = pool_factory(processes=1, wait=0.1)
    pool.decode(jpeg(colour_image(RED)), REQUEST)
    busy = threading.Thread(target=pool.decode, args=(PIXEL_BOMB, REQUEST))
    busy.start()
    try:
        wait_for(lambda: pool._idle.empty(), 10, "the decoder to be taken")
        with pytest.raises(ServerBusy, match="no decoder was free within 0.1 s"):
            pool.decode(jpeg(colour_image(RED)), REQUEST)
    finally:
        busy.join(30)


OWNER = """
import sys
from search_api.upload_decoder import DecodePool, DecodeRequest
pool = DecodePool(2, 2.0, 1024, 30)
pool.start()
print(pool.decode(open(sys.argv[1], "rb").read(), DecodeRequest(64, 10**7, "x")).shape, flush=True)
input()
"""


@pytest.mark.parametrize("how", ["killed", "exits"])
def test_decode_processes_end_with_the_process_that_started_them(tmp_path: pytest.TempPathFactory, how: str) -> None:
    image = tmp_path / "q.jpg"
    image.write_bytes(jpeg(colour_image(RED)))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(image)], env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdin is not None
        assert owner.stdout.readline().strip() == "(64, 64, 3)"
        decoders = children(owner.pid)
        assert len(decoders) == 2
        if how == "killed":
            owner.send_signal(signal.SIGKILL)
        else:
            owner.stdin.write("\n")
            owner.stdin.flush()
        owner.wait(30)
        wait_for(lambda: not any(d.is_running() and d.status() != psutil.STATUS_ZOMBIE for d in decoders), 10,
                 "the decode processes to end")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)


def test_ctrl_c_while_decode_processes_start_is_left_to_the_server(pool_factory: callable) -> None:
    """A terminal's Ctrl-C reaches every process of the server, decode processes still starting Python
    included: they neither die of it nor print a fatal error; the server decides when they end."""
    pool = pool_factory()
    pool.start()
    started = children()
    assert len(started) == 2
    for _ in range(10):  # over the first half second: the interpreters are starting, then importing
        for child in started:
            os.kill(child.pid, signal.SIGINT)
        time.sleep(0.05)
    data = jpeg(colour_image(RED, seed=4))
    for _ in range(4):
        assert np.array_equal(pool.decode(data, REQUEST), decode_image(data, 64, 50_000_000).pixels)
    assert {c.pid for c in children()} == {c.pid for c in started}  # none was replaced
