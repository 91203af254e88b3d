"""How soon a running `serve --watch` shows what happens in the library.

    .venv/bin/python bench/watch_latency.py [--singles 50] [--bulk 1000] [--deletes 50] [--model HANDLE]

Against `lookalike serve --watch` (one worker, EfficientNet-Lite0 from the demo extra by default):
1. copies `--singles` photos one by one into the watched root at random intervals and times
   "file closed -> returned by POST /api/v1/search" (the photo itself as the query, found among the
   top 5);
2. copies `--bulk` photos at once and times them until all are in the catalog, then indexes the same
   files with `lookalike index --json` into a fresh data directory: the ratio of the two rates (the
   watcher's from the start of the copy; the index run's is its own images/s, model loading included,
   process start left out);
3. deletes `--deletes` of the single photos one by one and times "deleted -> gone from the results".
Prints p50/p95 of each latency and the rates. Targets: p95 <= 10 s, bulk ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serving import LOOPBACK, REPO, free_port, multipart, query_photos  # noqa: E402
from storage.catalog import Catalog  # noqa: E402

LITE0 = "package:efficientnet-lite0"
TOP_K = 5


def env_for(handle: str, image_size: int, data_dir: Path, root: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "LOOKALIKE_CONFIG": "", "LOOKALIKE_MODEL__HANDLE": handle,
           "LOOKALIKE_MODEL__IMAGE_SIZE": str(image_size), "LOOKALIKE_STORAGE__DATA_DIR": str(data_dir),
           "LOOKALIKE_LOGGING__LEVEL": "WARNING", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if root is not None:
        env["LOOKALIKE_INDEXER__ROOTS"] = str(root)
    return env


def wait(condition: Callable[[], bool], seconds: float, what: str, step: float = 0.1) -> float:
    """Seconds until `condition` holds (polled every `step`); exits when it never does."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise SystemExit(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started


def found_paths(base: str, photo: bytes) -> set[str]:
    body, content_type = multipart(photo)
    request = urllib.request.Request(f"{base}/api/v1/search?k={TOP_K}", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return {hit["path"] for hit in json.load(response)["results"]}
    except OSError:
        return set()  # not ready yet (no index at all): not found


def catalog_files(url: str) -> int:
    catalog = Catalog(url, create=False)
    try:
        return catalog.count_files()
    except Exception:
        return 0
    finally:
        catalog.close()


def p50_p95(seconds: list[float]) -> str:
    if not seconds:
        return "n/a"
    return f"p50 {np.percentile(seconds, 50):.2f} s, p95 {np.percentile(seconds, 95):.2f} s (n={len(seconds)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=50)
    parser.add_argument("--bulk", type=int, default=1000)
    parser.add_argument("--deletes", type=int, default=50)
    parser.add_argument("--max-interval", type=float, default=3.0, help="most seconds between single copies")
    parser.add_argument("--model", default=LITE0, help="model handle (default: EfficientNet-Lite0)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lookalike-watch-bench-"))
    root, data, staging = work / "library", work / "data", work / "staging"
    for folder in (root, staging / "bulk"):
        folder.mkdir(parents=True)
    photos = query_photos(args.singles + args.bulk + 4, seed=args.seed + 1)
    for i, photo in enumerate(photos[:4]):  # something to serve from the start
        (root / f"seed{i}.jpg").write_bytes(photo)
    singles, bulk = photos[4:4 + args.singles], photos[4 + args.singles:]
    for i, photo in enumerate(bulk):
        (staging / "bulk" / f"b{i:05d}.jpg").write_bytes(photo)
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    server = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--watch", "--host", LOOPBACK,
                               "--port", str(port), "--workers", "1"],
                              env=env_for(args.model, args.image_size, data, root), cwd=REPO,
                              stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT)
    url = f"sqlite:///{data / 'catalog.db'}"
    try:
        wait(lambda: bool(found_paths(base, photos[0])), 600, "the server and its first scan", step=1.0)
        print(f"server ready (model {args.model}); work folder {work}")

        closed_to_found: list[float] = []
        for i, photo in enumerate(singles):
            path = root / "singles" / f"s{i:04d}.jpg"
            path.parent.mkdir(exist_ok=True)
            with open(path, "wb") as out:
                out.write(photo)
            closed = time.monotonic()
            wait(lambda p=str(path), q=photo: p in found_paths(base, q), 120, f"{path.name} found")
            closed_to_found.append(time.monotonic() - closed)
            time.sleep(rng.uniform(0, args.max_interval))
        print(f"single files, closed -> returned by search: {p50_p95(closed_to_found)}")

        before = catalog_files(url)
        started = time.monotonic()
        shutil.copytree(staging / "bulk", root / "bulk")
        copied = time.monotonic() - started
        wait(lambda: catalog_files(url) >= before + len(bulk), 3600, "the bulk copy indexed", step=0.5)
        watch_seconds = time.monotonic() - started
        watch_rate = len(bulk) / watch_seconds
        print(f"bulk copy of {len(bulk)}: copied in {copied:.1f} s, all in the catalog after {watch_seconds:.1f} s "
              f"({watch_rate:.1f} img/s)")

        gone_from_results: list[float] = []
        for i in range(min(args.deletes, len(singles))):
            path = root / "singles" / f"s{i:04d}.jpg"
            path.unlink()
            deleted = time.monotonic()
            wait(lambda p=str(path), q=singles[i]: p not in found_paths(base, q), 120,
                 f"{path.name} gone")
            gone_from_results.append(time.monotonic() - deleted)
        print(f"deleted -> gone from results: {p50_p95(gone_from_results)}")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    seconds = index_seconds(args.model, args.image_size, work / "index-data", staging / "bulk")
    index_rate = len(bulk) / seconds
    print(f"lookalike index on the same {len(bulk)} files (model loaded beforehand, as the watcher's is): "
          f"{seconds:.1f} s ({index_rate:.1f} img/s)")
    print(f"bulk rate, watch / index: {watch_rate / index_rate:.2f} (target >= 0.8)")
    shutil.rmtree(work, ignore_errors=True)


def index_seconds(handle: str, image_size: int, data_dir: Path, folder: Path) -> float:
    """Wall time of an index run of `folder` (the pipeline `lookalike index` runs) with the model loaded first."""
    from indexer.model import Embedder, configured_model_id
    from indexer.pipeline import LibraryIndexer
    from indexer.settings import load_settings
    from storage.vector_index import IndexStore

    settings = load_settings(config_file=None, environ={}, overrides={
        "model": {"handle": handle, "image_size": image_size}, "storage": {"data_dir": str(data_dir)}})
    embedder = Embedder.from_settings(settings.model)
    embedder.embed(np.zeros((1, image_size, image_size, 3), np.uint8))  # warm
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        indexer = LibraryIndexer(settings, catalog, IndexStore(data_dir / "index"),
                                 configured_model_id(settings.model), lambda: embedder)
        started = time.monotonic()
        report = indexer.run([str(folder)])
        return time.monotonic() - started if report.indexed else float("nan")
    finally:
        catalog.close()


if __name__ == "__main__":
    main()
