"""Indexer memory: resident memory while indexing a large library of small images.

    python bench/index_memory.py                 # 100,000 images
    python bench/index_memory.py --images 20000

Memory should follow the batch size and queue depth, not the library size. The model is the
tiny deterministic test model (16-d features) so that the run takes minutes, not days: the
figures are the pipeline's own (scan, decode workers, queues, catalog writes, index), measured
as the growth of resident memory over the footprint right after the model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

if __name__ == "__main__":  # decode worker processes re-import this file: keep TensorFlow out of them
    sys.path.insert(0, str(REPO / "tests"))
    from model_fixtures import build_tf1_hub_module

    from indexer.model import Embedder, configured_model_id
    from indexer.pipeline import LibraryIndexer
    from indexer.settings import load_settings
    from storage.catalog import Catalog
    from storage.vector_index import IndexStore

SIZE = 64


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


class Sampler:
    """Progress sink that samples this process's and its decode workers' resident memory."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.done = 0
        self.samples: list[tuple[int, float, float]] = []  # (files done, indexer MB, workers MB)

    def start(self, total: int, found: int = 0) -> None:
        self.total = total

    def advance(self, outcome: str) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            workers = sum(rss_mb(pid) for pid in children() if Path(f"/proc/{pid}").exists())
            self.samples.append((self.done, rss_mb(), workers))


def make_library(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)  # a 3x3 pattern, scaled up: distinct images
        Image.fromarray(pixels).resize((96, 72), Image.Resampling.NEAREST).save(folder / f"{i:06d}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        make_library(tmp_path / "library", args.images)
        print(f"wrote {args.images:,} JPEGs of 96x72 in {time.perf_counter() - started:.0f} s")
        module = build_tf1_hub_module(tmp_path / "model")
        settings = load_settings(config_file=None, environ={}, overrides={
            "model": {"handle": str(module), "image_size": SIZE, "batch_size": args.batch_size},
            "storage": {"data_dir": str(tmp_path / "data")},
        })
        embedder = Embedder.from_settings(settings.model)
        embedder.warm_up(args.batch_size)
        baseline = rss_mb()
        sampler = Sampler(every=max(1, args.images // 50))
        catalog = Catalog(settings.storage.resolved_database_url())
        indexer = LibraryIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                                 configured_model_id(settings.model), lambda: embedder, progress=sampler)
        report = indexer.run([str(tmp_path / "library")])
        catalog.close()
    assert report.indexed == args.images, report.to_json()
    tenth = next(s for s in sampler.samples if s[0] >= args.images // 10)
    peak = max(s[1] for s in sampler.samples)
    workers_peak = max(s[2] for s in sampler.samples)
    print(f"indexed {report.indexed:,} images in {report.seconds:.0f} s ({report.indexed / report.seconds:.0f} img/s), "
          f"batch {args.batch_size}, {settings.indexer.effective_decode_workers()} decode worker processes")
    print(f"indexer RSS after the model loaded: {baseline:7.0f} MB")
    print(f"indexer RSS at 10% ({tenth[0]:,} files) : {tenth[1]:7.0f} MB")
    print(f"indexer RSS at the end           : {sampler.samples[-1][1]:7.0f} MB")
    print(f"indexer RSS peak                 : {peak:7.0f} MB  (+{peak - baseline:.0f} MB over the model's footprint)")
    print(f"growth from 10% to 100% of the run: {sampler.samples[-1][1] - tenth[1]:+.0f} MB")
    print(f"decode workers, RSS summed, peak : {workers_peak:7.0f} MB")
    for done, mb, workers in sampler.samples[:: max(1, len(sampler.samples) // 10)]:
        print(f"  {done:>8,} files: indexer {mb:6.0f} MB, workers {workers:6.0f} MB")


if __name__ == "__main__":
    main()
