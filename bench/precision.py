"""CPU precision: speed and agreement of float32 and bfloat16, with and without cached weight layouts.

    python bench/precision.py --model /path/to/efficientnet_lite0_tf1 --image-size 224
    python bench/precision.py                       # B4 stand-in (random weights: speed only)
    python bench/precision.py --batches 1 8 --rounds 3

Each configuration runs in its own process (TensorFlow's precision rewrite and oneDNN's settings
are process-wide), round by round in turn so that a noisy machine slows all alike; the median is
reported, as wall-clock img/s and as CPU milliseconds per image (steadier on a shared machine).
Agreement is measured against float32 with the default settings on real photos (scikit-image and
scikit-learn sample photos, each also cut into crops and mirrored): top-1 agreement, top-5
overlap, and the cosine between feature vectors. With random weights (the B4 stand-in) the labels
mean nothing, so only the speed and cosine columns are worth reading.

TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 lets oneDNN keep each convolution's weights in the layout (and,
under bfloat16, the type) its kernel wants instead of converting them on every call; the product
sets it (indexer/tf_runtime.py) because its graphs are frozen for inference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

CONFIGS = (("float32", "0"), ("float32", "1"), ("mixed_bfloat16", "0"), ("mixed_bfloat16", "1"))
REFERENCE = CONFIGS[0]


def photo_set(size: int) -> np.ndarray:
    """Real photos at the model's input size: each whole, mirrored, and as four corner crops."""
    from PIL import Image, ImageOps

    from indexer.sample_library import _photos

    out = []
    for load in _photos().values():
        image = Image.fromarray(np.asarray(load())).convert("RGB")
        w, h = image.size
        side = min(w, h)
        views = [image, ImageOps.mirror(image)]
        for fx, fy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            cut = int(side * 0.7)
            left, top = int(fx * (w - cut)), int(fy * (h - cut))
            views.append(image.crop((left, top, left + cut, top + cut)))
        for view in views:
            out.append(np.asarray(ImageOps.fit(view, (size, size), Image.BILINEAR)))
    return np.stack(out).astype(np.uint8)


def child(args: argparse.Namespace) -> None:
    """One configuration: speed per batch size, then features and top-5 of the photo set."""
    from indexer.model import Embedder

    embedder = Embedder(args.model, args.image_size, precision=args.precision)
    rng = np.random.default_rng(0)
    speed = {}
    for batch_size in args.batches:
        batch = rng.integers(0, 256, (batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
        embedder.embed(batch)
        embedder.embed(batch)
        calls = max(2, args.images // batch_size)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            embedder.embed(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        speed[batch_size] = {"img_s": calls * batch_size / wall, "cpu_ms": 1000 * cpu / (calls * batch_size)}
    photos = photo_set(args.image_size)
    features, top5 = [], []
    for start in range(0, len(photos), 8):
        out = embedder.embed(photos[start:start + 8])
        features.append(out.features)
        top5.extend(np.argsort(-out.probabilities, axis=1)[:, :5].tolist())
    np.save(args.features_out, np.concatenate(features))
    print(json.dumps({"speed": speed, "top5": top5}))


def run_config(args: argparse.Namespace, precision: str, frozen: str, features_out: Path) -> dict:
    env = dict(os.environ, TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=frozen)
    command = [sys.executable, __file__, "--child", "--model", args.model, "--image-size", str(args.image_size),
               "--precision", precision, "--features-out", str(features_out), "--images", str(args.images),
               "--batches", *map(str, args.batches)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="module (default: the B4 stand-in, built on first use)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the size the module declares")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=24, help="images timed per batch size and round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--features-out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from bench.b4_stand_in import bench_model

    args.model, args.image_size = bench_model(args.model, args.image_size)
    print(f"model {args.model} at {args.image_size}x{args.image_size}; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    speeds: dict[tuple[str, str], dict[int, list[dict]]] = {c: {b: [] for b in args.batches} for c in CONFIGS}
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for config in CONFIGS:
                result = run_config(args, *config, Path(tmp) / f"{config[0]}-{config[1]}.npy")
                results[config] = result
                for batch_size, figures in result["speed"].items():
                    speeds[config][int(batch_size)].append(figures)
        reference = np.load(Path(tmp) / f"{REFERENCE[0]}-{REFERENCE[1]}.npy")
        cosines = {c: np.sum(np.load(Path(tmp) / f"{c[0]}-{c[1]}.npy") * reference, axis=1) for c in CONFIGS}
    print(f"load average {os.getloadavg()[0]:.1f} at the end; {len(reference)} photos for agreement")
    columns = " | ".join(f"batch {b} img/s | batch {b} CPU ms/img" for b in args.batches)
    print(f"| precision | frozen weights | {columns} | top-1 agreement | top-5 overlap | cosine min / mean |")
    print("| --- " * (5 + 2 * len(args.batches)) + "|")
    ref_top5 = results[REFERENCE]["top5"]
    for config in CONFIGS:
        cells = []
        for batch_size in args.batches:
            runs = speeds[config][batch_size]
            cells.append(f"{statistics.median(r['img_s'] for r in runs):.1f}")
            cells.append(f"{statistics.median(r['cpu_ms'] for r in runs):.0f}")
        top5 = results[config]["top5"]
        agree = np.mean([a[0] == b[0] for a, b in zip(top5, ref_top5, strict=True)])
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5, ref_top5, strict=True)])
        cos = cosines[config]
        print(f"| {config[0]} | {'yes' if config[1] == '1' else 'no'} | {' | '.join(cells)} | "
              f"{agree:.3f} | {overlap:.3f} | {cos.min():.4f} / {cos.mean():.4f} |")


if __name__ == "__main__":
    main()
