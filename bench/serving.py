"""Shared by the HTTP benchmarks: a synthetic 1792-d catalog, a `lookalike serve` subprocess on
loopback, query photos, and percentiles."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexer.model import model_id  # noqa: E402
from storage.catalog import Catalog, FileRef, NewImage  # noqa: E402

DIM = 1792
IMAGE_SIZE = 380
LOOPBACK = "127.0.0.1"


def server_env(module: Path, data_dir: Path, threads: int = 4) -> dict[str, str]:
    return {**os.environ, "LOOKALIKE_CONFIG": "", "LOOKALIKE_MODEL__HANDLE": str(module),
            "LOOKALIKE_MODEL__IMAGE_SIZE": str(IMAGE_SIZE), "LOOKALIKE_STORAGE__DATA_DIR": str(data_dir),
            "LOOKALIKE_API__THREADS": str(threads), "LOOKALIKE_LOGGING__LEVEL": "WARNING",
            "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def ensure_catalog(module: Path, data_dir: Path, count: int, seed: int = 0) -> None:
    """A catalog of `count` synthetic images (random unit vectors, random top-5 predictions) for the
    module's model id, and a published index (`lookalike rebuild`); reused when already there."""
    mid = model_id(str(module), IMAGE_SIZE)
    catalog = Catalog(f"sqlite:///{(data_dir / 'catalog.db').resolve()}")
    try:
        have = catalog.count_images()
        if have not in (0, count) or (have and catalog.model_ids() != {mid}):
            raise SystemExit(f"{data_dir} holds another catalog ({have} images); use a fresh --data-dir")
        rng = np.random.default_rng(seed)
        started = time.perf_counter()
        for start in range(have, count, 5000):
            n = min(5000, count - start)
            vectors = rng.standard_normal((n, DIM), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            classes = rng.integers(0, 1000, (n, 5))
            images = [NewImage(f"{start + i:064x}", 640, 480, "JPEG", mid, vectors[i],
                               [(int(c), p) for c, p in zip(classes[i], (0.5, 0.2, 0.1, 0.05, 0.02), strict=True)])
                      for i in range(n)]
            files = [FileRef(f"/synthetic/{start + i}.jpg", "/synthetic", 1000, 1, f"{start + i:064x}")
                     for i in range(n)]
            catalog.apply(images, files)
        if have == 0:
            print(f"catalog of {count:,} synthetic images built in {time.perf_counter() - started:.0f}s")
    finally:
        catalog.close()
    if not (data_dir / "index" / "manifest.json").exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lookalike", "rebuild"], env=server_env(module, data_dir),
                       check=True, cwd=REPO)
        print(f"index published in {time.perf_counter() - started:.0f}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start_server(module: Path, data_dir: Path, port: int, threads: int = 4) -> subprocess.Popen[bytes]:
    """`lookalike serve` on loopback, returned once /readyz answers (model warm, index loaded)."""
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--host", LOOPBACK, "--port", str(port),
                             "--workers", "1"], env=server_env(module, data_dir, threads), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lookalike serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/readyz", timeout=5) as response:
                if response.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("lookalike serve did not become ready within 300 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def query_photos(count: int, seed: int = 1) -> list[bytes]:
    """Photo-sized JPEGs (640x480) of smooth random colour fields."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=88)
        photos.append(buf.getvalue())
    return photos


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "lookalikebenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    values = np.asarray(seconds) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))
