"""EfficientNet-B4's real compute with random weights, as a TF1 Hub module: the benchmarks' model.

    python bench/b4_stand_in.py                      # builds build/b4_random_tf1 once (~1 min, 76 MB)
    python bench/b4_stand_in.py --out DIR --seed 1 --force

The product's default model, https://tfhub.dev/google/efficientnet/b4/classification/1, needs
a download. Its speed does not depend on its weights, so the benchmarks use this stand-in: the
same format (one TF1 graph holding the network once; signatures image_feature_vector, 1792-d,
and image_classification / default, 1000 logits; input `images` float32 [N, H, W, 3] in
[0, 1]; 380x380 declared in image_module_info; empty tag set; tfhub_module.pb), and the same
network, tf_keras.applications.EfficientNetB4(weights=None, classifier_activation=None), with
random weights: its labels mean nothing. Keras' B4 takes [0, 255] input, so the module
multiplies by 255 first, as the real one takes [0, 1].

Benchmarks that need B4 call ensure_b4_stand_in() when no --model is given: the first run builds
it, later runs reuse it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from indexer.hub_module_writer import check_out_dir, write_tf1_hub_module  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_PATH = REPO / "build" / "b4_random_tf1"
IMAGE_SIZE = 380
FEATURE_DIM = 1792


def build_b4_stand_in(out_dir: Path, seed: int = 0) -> Path:
    """Write the B4 stand-in into out_dir (new or empty)."""
    from indexer.tf_runtime import load_tensorflow

    tf = load_tensorflow()
    import tf_keras

    out_dir = check_out_dir(out_dir)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        images = v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        # Learning phase 0 while building: inference BatchNorm and no dropout, with no
        # conditionals left in the graph. Built on the module's input tensor, so the graph
        # holds the network once (calling a built model with training=False would add a second
        # copy). The scope is deprecated for eager code, not for graphs like this one.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*learning_phase_scope")
            with tf_keras.backend.learning_phase_scope(0):
                model = tf_keras.applications.EfficientNetB4(
                    weights=None, classifier_activation=None, input_tensor=images * 255.0)
        features = tf.identity(model.get_layer("avg_pool").output, name="feature_vector")
        logits = tf.identity(model.output, name="logits")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            write_tf1_hub_module(out_dir, sess, images, features, logits, (IMAGE_SIZE, IMAGE_SIZE),
                                 v1.global_variables())
    tf_keras.backend.clear_session()
    return out_dir


def ensure_b4_stand_in(path: Path = DEFAULT_PATH, seed: int = 0) -> Path:
    """The stand-in module at path, built there first if it is not yet (built aside, then renamed in)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file() and (path / "tfhub_module.pb").is_file():
        return path
    check_out_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.warning("building the EfficientNet-B4 stand-in (random weights) into %s: about a minute, once", path)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        build_b4_stand_in(tmp / "module", seed)
        try:
            (tmp / "module").rename(path)  # replaces an empty directory, never a full one
        except OSError:
            if not (path / "saved_model.pb").is_file():  # not just lost a race with another build
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("built %s in %.0f s", path, time.perf_counter() - started)
    return path


def bench_model(model: str | None, image_size: int | None) -> tuple[str, int]:
    """The module a benchmark runs and its input size.

    The module is --model, else the B4 stand-in (built on first use); the size is --image-size,
    else the size the module declares (a TF2 SavedModel declares none: then it must be given).
    """
    handle = str(ensure_b4_stand_in()) if model is None else model
    if image_size:
        return handle, image_size
    from indexer.model import ModelUnavailableError, declared_image_size, resolve_handle

    try:
        declared = declared_image_size(resolve_handle(handle, 60.0))
    except ModelUnavailableError as exc:
        raise SystemExit(str(exc)) from None
    if declared is None or declared[0] != declared[1]:
        what = "no input size" if declared is None else f"a {declared[0]}x{declared[1]} input"
        raise SystemExit(f"{handle} declares {what}: give the square size to use with --image-size")
    return handle, declared[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help=f"module directory (default {DEFAULT_PATH})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--force", action="store_true", help="rebuild even if the module exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force and (args.out / "saved_model.pb").is_file():  # only ever a module goes
        shutil.rmtree(args.out)
    path = ensure_b4_stand_in(args.out, args.seed)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"{path}: EfficientNet-B4 stand-in, {IMAGE_SIZE}x{IMAGE_SIZE}, {FEATURE_DIM}-d, {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
