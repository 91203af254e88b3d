"""Model speed: the product's embedder on a TF1 Hub module vs the same network as native Keras.

    python bench/model_speed.py                      # B4-compute stand-in at 380x380, batches 1, 8, 32
    python bench/model_speed.py --batches 8 --rounds 5
    python bench/model_speed.py --model DIR          # another module, at the size it declares

Without --model it runs the B4 stand-in (real B4 graph and cost, random weights; see
bench/b4_stand_in.py), building it into build/b4_random_tf1 on first use (about a minute).

Both paths see the same inputs and batch sizes, interleaved round by round so that a noisy
machine slows both alike; the median of the rounds is reported. Also measured: the first query
after the product's warm-up against a steady-state query, and resident memory per batch size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.b4_stand_in import bench_model  # noqa: E402
from bench.search import rss_mb  # noqa: E402
from indexer.model import Embedder  # noqa: E402


def native_b4(image_size: int):  # type: ignore[no-untyped-def]
    """EfficientNetB4 (random weights) as a plain tf.function, fed [0,1] images like the module."""
    import tensorflow as tf

    model = tf.keras.applications.EfficientNetB4(weights=None, input_shape=(image_size, image_size, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def forward(images: tf.Tensor) -> tf.Tensor:
        return model(images * 255.0, training=False)

    return lambda pixels: forward(tf.constant(pixels.astype(np.float32) / 255)).numpy()


def seconds(fn, batch: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="module (default: the B4 stand-in, built on first use)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the size the module declares")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.model, size = bench_model(args.model, args.image_size)
    rng = np.random.default_rng(0)

    before = rss_mb()
    started = time.perf_counter()
    embedder = Embedder(args.model, size)
    load_s = time.perf_counter() - started
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    first_query = seconds(embedder.embed, one)  # the first real query, right after the warm-up
    print(f"product: {args.model} ({embedder.format}, {embedder.route}); load + warm-up {load_s:.1f} s "
          f"(warm-up call {embedder.warmup_seconds:.2f} s), RSS +{rss_mb() - before:,.0f} MB")
    native = native_b4(size)
    print(f"native : tf.keras.applications.EfficientNetB4(weights=None) under tf.function; {os.cpu_count()} cores")

    results: dict[int, dict[str, list[float]]] = {}
    for batch_size in args.batches:
        batch = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
        embedder.embed(batch)  # each batch size once untimed: the first call per shape is slower
        native(batch)
        times: dict[str, list[float]] = {"product": [], "native": []}
        for _ in range(args.rounds):
            times["product"].append(seconds(embedder.embed, batch))
            times["native"].append(seconds(native, batch))
        results[batch_size] = times
        product = batch_size / statistics.median(times["product"])
        native_rate = batch_size / statistics.median(times["native"])
        print(f"batch {batch_size:>3}: product {product:6.2f} img/s, native {native_rate:6.2f} img/s, "
              f"ratio {product / native_rate:.2f}; RSS {rss_mb():,.0f} MB")

    if 1 in results:
        steady = statistics.median(results[1]["product"])
        print(f"warm start: first query {first_query * 1000:.0f} ms vs steady state {steady * 1000:.0f} ms "
              f"= {first_query / steady:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
