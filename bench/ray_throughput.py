"""Index throughput on Ray Data vs the single-machine pipeline, on this machine, in the same run.

    python bench/ray_throughput.py                   # the B4-compute stand-in (bench/b4_stand_in.py)
    python bench/ray_throughput.py --model DIR       # another module, at the size it declares

Both paths index the same photos into catalogs of their own. Each is timed on a small library
(fixed costs: loading the model, starting the decode workers or the Ray actors) and on the full
one, so the report separates the fixed overhead from the per-image rate. Starting Ray itself is
timed apart: a long-lived cluster pays it once, not per run.
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
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":  # Ray workers never import this file; keep the heavy imports to the driver anyway
    import ray
    from index_throughput import make_photos, sample_photos

    from bench.b4_stand_in import bench_model
    from indexer.distributed import RayIndexer
    from indexer.model import Embedder, configured_model_id
    from indexer.pipeline import IndexReport, LibraryIndexer
    from indexer.ray_cluster import ray_cluster
    from indexer.settings import Settings, load_settings
    from storage.catalog import Catalog
    from storage.vector_index import IndexStore

WARM_UP_IMAGES = 8  # the small library: its time is mostly fixed cost


def settings_for(args: argparse.Namespace, data_dir: Path) -> Settings:
    storage: dict[str, object] = {"data_dir": str(data_dir)}
    if args.database_url:
        storage["database_url"] = args.database_url
    return load_settings(config_file=None, environ={}, overrides={
        "model": {"handle": args.model, "image_size": args.image_size, "batch_size": args.batch_size},
        "storage": storage,
    })


def index_once(args: argparse.Namespace, library: Path, data_dir: Path, on_ray: bool) -> IndexReport:
    """One fresh run (new catalog, model loaded inside the run) of one path over `library`."""
    settings = settings_for(args, data_dir)
    catalog = Catalog(settings.storage.resolved_database_url())
    if args.database_url:
        catalog.clear()
    store = IndexStore(data_dir / "index")
    mid = configured_model_id(settings.model)
    try:
        if on_ray:
            with ray_cluster("local") as cluster:
                report = RayIndexer(settings, catalog, store, mid, cluster).run([str(library)])
        else:
            report = LibraryIndexer(settings, catalog, store, mid,
                                    lambda: Embedder.from_settings(settings.model)).run([str(library)])
    finally:
        catalog.close()
    assert report.failed == 0 and report.indexed == report.found, report.to_json()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="module (default: the B4 stand-in, built on first use)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the size the module declares")
    parser.add_argument("--images", type=int, default=256, help="photos in the full library")
    parser.add_argument("--photo-size", default="640x480", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the product's default for the device")
    parser.add_argument("--database-url", default=None,
                        help="catalog database (default: a SQLite file per path; a PostgreSQL URL is cleared)")
    args = parser.parse_args()
    sample_photos()  # before the slow start, so a missing scikit-image is said at once
    args.model, args.image_size = bench_model(args.model, args.image_size)
    width, height = (int(v) for v in args.photo_size.split("x"))
    logging.basicConfig(level=logging.WARNING)
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        small, full = Path(tmp) / "small", Path(tmp) / "full"
        small.mkdir()
        full.mkdir()
        make_photos(small, WARM_UP_IMAGES, width, height)
        make_photos(full, args.images, width, height)

        times: dict[str, dict[str, float]] = {}
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
        ray_start = time.perf_counter() - started
        try:
            for name, on_ray in (("single machine", False), ("Ray Data", True)):
                index_once(args, small, Path(tmp) / f"{name}-first", on_ray)  # imports, first workers: untimed
                warm = index_once(args, small, Path(tmp) / f"{name}-small", on_ray)
                report = index_once(args, full, Path(tmp) / f"{name}-full", on_ray)
                times[name] = {"small": warm.seconds, "full": report.seconds}
        finally:
            ray.shutdown()

    print(f"model {args.model} at {args.image_size}x{args.image_size}, {args.images} JPEGs of {width}x{height}, "
          f"{cores} CPU cores, catalog {'PostgreSQL' if args.database_url else 'SQLite'}")
    print(f"starting a local Ray: {ray_start:.1f} s (once per cluster, not per run)")
    rates = {}
    for name, t in times.items():
        rates[name] = (args.images - WARM_UP_IMAGES) / max(t["full"] - t["small"], 1e-9)
        fixed = t["small"] - WARM_UP_IMAGES / rates[name]
        print(f"  {name:15s}: {args.images / t['full']:6.2f} img/s end-to-end ({t['full']:.1f} s), "
              f"{rates[name]:6.2f} img/s marginal, ~{max(fixed, 0):.1f} s fixed per run")
    single, spread = times["single machine"]["full"], times["Ray Data"]["full"]
    print(f"overhead ratio Ray / single machine: {spread / single:.2f} end-to-end, "
          f"{rates['single machine'] / rates['Ray Data']:.2f} per image (1.00 = no overhead)")


if __name__ == "__main__":
    main()
