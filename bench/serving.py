"""Shared by the HTTP benchmarks: a synthetic 1792-d catalog, a `lookalike serve` subprocess on
loopback, query photos, and percentiles.

The synthetic vectors cluster, as photo collections do (bursts, scenes, subjects): unit vectors
around one random centre per 1,000 images (at least 100 centres), with noise of 0.7 per
dimension, as in bench/search.py. Uniform random vectors have no neighbourhoods for an index to
find: an inverted file would need to visit nearly every list for the recall of exact search.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexer.model import configured_model_id  # noqa: E402
from indexer.settings import ModelSettings  # noqa: E402
from storage.catalog import Catalog, FileRef, NewImage  # noqa: E402

DIM = 1792
IMAGE_SIZE = 380
LOOPBACK = "127.0.0.1"


def server_env(module: Path, data_dir: Path, threads: int = 4) -> dict[str, str]:
    return {**os.environ, "LOOKALIKE_CONFIG": "", "LOOKALIKE_MODEL__HANDLE": str(module),
            "LOOKALIKE_MODEL__IMAGE_SIZE": str(IMAGE_SIZE), "LOOKALIKE_STORAGE__DATA_DIR": str(data_dir),
            "LOOKALIKE_API__THREADS": str(threads), "LOOKALIKE_LOGGING__LEVEL": "WARNING",
            "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


NOISE = 0.7
BLOCK = 5000


def catalog_dir(count: int) -> Path:
    """Where the benchmarks keep the synthetic catalog of `count` images."""
    return REPO / "build" / f"bench-clustered-{count}"


def cluster_centres(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((max(100, count // 1000), DIM), dtype=np.float32)


def clustered_vectors(centres: np.ndarray, n: int, seed: int | list[int]) -> np.ndarray:
    """`n` unit vectors around random members of `centres`."""
    rng = np.random.default_rng(seed)
    block = centres[rng.integers(0, len(centres), n)]
    block = block + NOISE * rng.standard_normal(block.shape, dtype=np.float32)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def ensure_catalog(module: Path, data_dir: Path, count: int, seed: int = 0, rebuild: bool = False) -> str:
    """A catalog of `count` synthetic images (clustered unit vectors, random top-5 predictions) for the
    module's model id, and a published index (`lookalike rebuild`); reused when already there, the
    index rebuilt when asked or when it was built before its recall was measured. Returns what
    `lookalike rebuild` printed (empty when the index was reused). Real photos added by
    `ensure_library_photos` do not count."""
    mid = configured_model_id(ModelSettings(handle=str(module), image_size=IMAGE_SIZE))  # the server's id
    catalog = Catalog(f"sqlite:///{(data_dir / 'catalog.db').resolve()}")
    try:
        have = catalog.count_images() - len(catalog.ids_for_hashes(_hashes(library_photos())))
        if have not in (0, count) or (have and catalog.model_ids() != {mid}):
            raise SystemExit(f"{data_dir} holds another catalog ({have} images); use a fresh --data-dir")
        centres = cluster_centres(count, seed)
        started = time.perf_counter()
        for start in range(have, count, BLOCK):
            n = min(BLOCK, count - start)
            rng = np.random.default_rng([seed, start])
            vectors = clustered_vectors(centres, n, [seed, start, 1])
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
    manifest = data_dir / "index" / "manifest.json"
    if rebuild or not manifest.exists() or "recall_at_10" not in json.loads(manifest.read_text()):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lookalike", "rebuild"], env=server_env(module, data_dir),
                              check=True, cwd=REPO, stdout=subprocess.PIPE, text=True)
        print(f"{done.stdout.strip()} in {time.perf_counter() - started:.0f}s")
        return done.stdout.strip()
    return ""


LIBRARY_PHOTOS = 20


def library_photos() -> list[bytes]:
    """Photos that `ensure_library_photos` puts in the catalog: queries of their bytes are repeat queries."""
    return query_photos(LIBRARY_PHOTOS, seed=7)


def _hashes(photos: list[bytes]) -> list[str]:
    return [hashlib.sha256(p).hexdigest() for p in photos]


def ensure_library_photos(data_dir: Path, mid: str, embed: Callable[[bytes], tuple[np.ndarray, list[tuple[int, float]]]]
                          ) -> list[bytes]:
    """`library_photos()` indexed in the catalog under their real SHA-256, with the vectors and predictions
    `embed` gives (the model's); a running server finds them in the catalog's tail. Returns the photos."""
    photos = library_photos()
    catalog = Catalog(f"sqlite:///{(data_dir / 'catalog.db').resolve()}")
    try:
        known = catalog.ids_for_hashes(_hashes(photos))
        images, files = [], []
        for i, (photo, digest) in enumerate(zip(photos, _hashes(photos), strict=True)):
            if digest not in known:
                vector, predictions = embed(photo)
                images.append(NewImage(digest, 640, 480, "JPEG", mid, vector, predictions))
                files.append(FileRef(f"/photos/library-{i}.jpg", "/photos", len(photo), 1, digest))
        if images:
            catalog.apply(images, files)
    finally:
        catalog.close()
    return photos


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
