"""Index throughput: model-only, decode-only and end-to-end rates side by side, on small and 12 MP photos.

    python bench/index_throughput.py                       # the B4-compute stand-in, at 380x380
    python bench/index_throughput.py --model DIR           # another module, at the size it declares
    python bench/index_throughput.py --ray ...   # Ray Data path vs single machine (bench/ray_throughput.py)

Without --model it runs the B4 stand-in (random weights, the real B4 graph at 380x380; see
bench/b4_stand_in.py), building it into build/b4_random_tf1 on first use (about a minute).
The photos are cut from scikit-image's sample photos (the demo extra).

It also shows that one embed call costs one forward pass: the product's pruned single-pass
function is timed against one signature alone and against both signatures called separately.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

if __name__ == "__main__":  # decode worker processes re-import this file: keep TensorFlow out of them
    from bench.b4_stand_in import bench_model
    from indexer.images import decode_image
    from indexer.model import Embedder, configured_model_id
    from indexer.pipeline import LibraryIndexer
    from indexer.prepare import FilePreparer, PrepareConfig
    from indexer.scan import FoundFile
    from indexer.settings import eval_crop_fraction, load_settings
    from indexer.tf_runtime import effective_batch_size
    from storage.catalog import Catalog
    from storage.vector_index import IndexStore

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def sample_photos() -> list[np.ndarray]:
    """scikit-image's real sample photos: JPEG decoding costs what it costs on real photos."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("the benchmark cuts its photos from scikit-image's sample photos: "
                         "pip install 'scikit-image>=0.22' (or the demo extra: pip install -e '.[demo]')") from None
    return [np.asarray(getattr(skimage.data, name)()) for name in SAMPLE_PHOTOS]


def make_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """Distinct JPEG photos cut at random from the real sample photos of scikit-image."""
    sources = sample_photos()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        src = Image.fromarray(sources[i % len(sources)]).convert("RGB")
        scale = max(width / src.width, height / src.height) * rng.uniform(1.0, 1.3)
        big = src.resize((int(src.width * scale) + 1, int(src.height * scale) + 1), Image.Resampling.BICUBIC)
        x = int(rng.integers(0, big.width - width + 1))
        y = int(rng.integers(0, big.height - height + 1))
        path = folder / f"photo{i:05d}.jpg"
        big.crop((x, y, x + width, y + height)).save(path, quality=90)
        paths.append(path)
    return paths


def time_per_image(fn, batch: np.ndarray, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn(batch)  # warm-up (trace and first call)
    started = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return (time.perf_counter() - started) / (repeats * len(batch))


def main() -> None:
    if "--ray" in sys.argv[1:]:  # the Ray Data path vs the single-machine pipeline: bench/ray_throughput.py
        import runpy

        sys.argv = [str(Path(__file__).with_name("ray_throughput.py"))] + [a for a in sys.argv[1:] if a != "--ray"]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="module (default: the B4 stand-in, built on first use)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the size the module declares")
    parser.add_argument("--images", type=int, default=160, help="small photos to index")
    parser.add_argument("--large-images", type=int, default=32, help="12 MP photos to index (0: skip)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the product's default for this device")
    parser.add_argument("--photo-size", default="640x480", help="WIDTHxHEIGHT of the small JPEGs")
    parser.add_argument("--large-size", default="4000x3000", help="WIDTHxHEIGHT of the large JPEGs")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the single-pass check")
    args = parser.parse_args()
    sample_photos()  # before the slow start, so a missing scikit-image is said at once
    args.model, args.image_size = bench_model(args.model, args.image_size)
    small = tuple(int(v) for v in args.photo_size.split("x"))
    large = tuple(int(v) for v in args.large_size.split("x"))
    args.batch_size = effective_batch_size(args.batch_size)
    logging.basicConfig(level=logging.WARNING)

    embedder = Embedder(args.model, args.image_size, crop_fraction=eval_crop_fraction(args.image_size))
    print(f"model {args.model} ({embedder.format}, {embedder.route}), {args.image_size}x{args.image_size}, "
          f"{embedder.feature_dim}-d, batch {args.batch_size}, {os.cpu_count()} CPU cores")

    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), 8, *small)
        pixels = np.stack([decode_image(p.read_bytes(), args.image_size, 10**9).pixels for p in photos])

        # Single-pass check at batch 8: the product's embed vs one signature vs both, interleaved rounds.
        import tensorflow as tf

        module = embedder._module
        sample = pixels[:8]
        floats = tf.constant(sample.astype(np.float32) / 255)
        classify = module.signatures["image_classification"]
        features = module.signatures["image_feature_vector"]
        candidates = {"embed": embedder.embed, "one": lambda _: classify(images=floats),
                      "two": lambda _: (classify(images=floats), features(images=floats))}
        rounds: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.repeats):
            for name, fn in candidates.items():
                rounds[name].append(time_per_image(fn, sample, 1))
        embed_s, one_s, two_s = (statistics.median(rounds[n]) for n in ("embed", "one", "two"))

    print(f"single-pass check at batch 8 (median of {args.repeats} rounds): product embed {embed_s * 1000:.0f} ms/img, "
          f"one signature {one_s * 1000:.0f} ms/img, both signatures {two_s * 1000:.0f} ms/img")
    print(f"  embed / one signature = {embed_s / one_s:.2f} (1.0 = one forward pass; two passes measure "
          f"{two_s / one_s:.2f})")

    cores = os.cpu_count() or 1
    for label, (width, height), count in (("small", small, args.images), ("12 MP", large, args.large_images)):
        if count == 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            library = Path(tmp) / "library"
            library.mkdir()
            photos = make_photos(library, count, width, height)
            r = scenario(photos, embedder, args, Path(tmp) / "data")
        core_s = r["model_core_s"] + r["decode_core_s"]
        ceiling = cores / core_s
        print(f"\n{label}: {count} JPEGs of {width}x{height} ({width * height / 1e6:.1f} MP), batch {args.batch_size}")
        print(f"  model-only      : {r['model_rate']:7.2f} img/s  ({r['model_core_s'] * 1000:6.1f} core-ms/img)")
        print(f"  decode-only     : {1 / r['decode_core_s']:7.2f} img/s on one core  "
              f"({r['decode_core_s'] * 1000:6.1f} core-ms/img: read, hash, decode, resize, thumbnail)")
        print(f"  end-to-end      : {r['e2e_rate']:7.2f} img/s  ({r['e2e_s']:.1f} s, of which {r['startup_s']:.2f} s "
              f"before the first image reached the model)")
        print(f"  end-to-end from the first model call to the last: {r['steady_rate']:7.2f} img/s")
        print(f"  core-time ceiling {cores} cores / {core_s * 1000:.1f} core-ms = {ceiling:.2f} img/s")
        print(f"  ratio end-to-end / model-only      = {r['e2e_rate'] / r['model_rate']:.2f}")
        print(f"  ratio end-to-end / core-time ceiling = {r['e2e_rate'] / ceiling:.2f}")
        print(f"  same ratios from the first model call: {r['steady_rate'] / r['model_rate']:.2f} and "
              f"{r['steady_rate'] / ceiling:.2f}")


def scenario(photos: list[Path], embedder: Embedder, args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    """Model-only, decode-only and end-to-end figures for one set of photos, side by side."""
    pixels = np.stack([decode_image(p.read_bytes(), args.image_size, 10**9).pixels for p in photos])
    settings = load_settings(config_file=None, environ={}, overrides={
        "model": {"handle": args.model, "image_size": args.image_size, "batch_size": args.batch_size},
        "storage": {"data_dir": str(data_dir)},
    })

    def model_only() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(pixels), args.batch_size):
            embedder.embed(pixels[start:start + args.batch_size])
        return time.perf_counter() - wall, time.process_time() - cpu

    # What a decode worker does per file, on one core: read, hash, decode, resize, write a thumbnail.
    preparer = FilePreparer(PrepareConfig(settings.storage.resolved_database_url(), args.image_size, 10**9,
                                          data_dir / "decode-only", settings.indexer.thumbnail_size,
                                          settings.model.effective_crop_fraction()))
    Catalog(settings.storage.resolved_database_url()).close()  # creates the schema the lookup reads
    found = [FoundFile(str(p), str(p.parent), p.stat().st_size, p.stat().st_mtime_ns) for p in photos]
    cpu = time.process_time()
    for f in found:
        assert preparer(f).decoded is not None
    decode_core_s = (time.process_time() - cpu) / len(found)

    # Model only is measured before and after the end-to-end run, so drift affects both sides alike.
    wall1, cpu1 = model_only()
    catalog = Catalog(settings.storage.resolved_database_url())
    calls: list[tuple[float, float]] = []  # (start, end) of every model call in the end-to-end run

    class Timed:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(embedder, name)

        def embed(self, batch: np.ndarray):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            out = embedder.embed(batch)
            calls.append((started, time.perf_counter()))
            return out

    indexer = LibraryIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                             configured_model_id(settings.model), lambda: Timed())
    run_started = time.perf_counter()
    report = indexer.run([str(photos[0].parent)])
    catalog.close()
    assert report.indexed == len(photos), report.to_json()
    wall2, cpu2 = model_only()
    return {
        "model_rate": 2 * len(photos) / (wall1 + wall2),
        "model_core_s": (cpu1 + cpu2) / (2 * len(photos)),
        "decode_core_s": decode_core_s,
        "e2e_rate": report.indexed / report.seconds,
        "e2e_s": report.seconds,
        # Until the first image reaches the model the decode workers are starting: a fixed cost per
        # run, which a real run hides behind loading the model.
        "startup_s": calls[0][0] - run_started,
        "steady_rate": report.indexed / (calls[-1][1] - calls[0][0]),
    }


if __name__ == "__main__":
    main()
