"""Process-wide TensorFlow settings: GPU memory growth, mixed precision, and the batch size to use.

TensorFlow places the model on a GPU by itself when one is visible. Memory growth lets the API
and the indexer share one GPU instead of the first process taking all of its memory. Mixed
precision is applied by TensorFlow's graph rewriter (Grappler), which is valid for any loaded
graph, TF1 Hub module or SavedModel alike: float16 on GPUs, bfloat16 on CPUs with oneDNN bf16
support. Outputs stay float32, and features are normalised in float32 after the model.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import ModuleType
from typing import Literal, get_args

log = logging.getLogger(__name__)

# What TensorFlow's native runtime prints on every start, whatever TF_CPP_MIN_LOG_LEVEL says (it logs
# before its logging is initialised): informational on a CPU-only machine, alarming to read. Kept for -v.
START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|^To enable the following instructions:"
    r"|failed call to cuInit"
)

# The model.precision setting's type (indexer/settings.py) and the values configure_tensorflow takes.
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# Batch 8 costs less CPU time per image than batch 1 (bench/precision.py: B4 209 against 239 ms of
# CPU per image, Lite0 12 against 18 ms; bench/model_speed.py on a quiet machine: 8.2 against 7.1
# img/s) for about 1.3 GB of peak memory with B4. Batch 32 gained a little more for twice the
# memory. An earlier choice of 1 came from wall-clock runs on a busy machine, which mislead.
CPU_BATCH_SIZE = 8
# A GPU needs larger batches to be kept busy; B4 at 380x380 and batch 64 fits in 16 GB with float32.
GPU_BATCH_SIZE = 64


@contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Capture what native code writes to file descriptor 2, then pass on all but the start-up noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if START_UP_NOISE.search(line):
                    log.debug("tensorflow: %s", line)
                elif line.strip():
                    sys.stderr.write(line + "\n")
            sys.stderr.flush()


def _cache_weight_layouts() -> None:
    """Let oneDNN convert each convolution's weights to its kernel's layout once, not on every call.

    The product's graphs are frozen for inference, so the weights never change. Without this,
    bfloat16 spends more time converting float32 weights on every call than its AMX kernels save
    (bench/precision.py). Set before TensorFlow builds its kernels; an explicit value is kept.
    """
    os.environ.setdefault("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")


@lru_cache(maxsize=1)
def _quiet_tensorflow() -> tuple[ModuleType, tuple[str, ...]]:
    _cache_weight_layouts()
    with _native_stderr_filtered(), warnings.catch_warnings():
        # tensorflow_hub 0.16 imports pkg_resources, which warns about its own deprecation.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import tensorflow as tf
        import tensorflow_hub  # noqa: F401  (imported here, quietly, once)

        found = tuple(device.name for device in tf.config.list_physical_devices("GPU"))  # CUDA starts here
    if found:
        log.info("TensorFlow %s runs the model on %d GPU(s): %s", tf.__version__, len(found), ", ".join(found))
    else:
        log.info("TensorFlow %s runs the model on the CPU (no GPU visible)", tf.__version__)
    return tf, found


def load_tensorflow() -> ModuleType:
    """TensorFlow (and tensorflow_hub), imported once without the native runtime's start-up noise."""
    return _quiet_tensorflow()[0]


def gpus() -> tuple[str, ...]:
    return _quiet_tensorflow()[1]


def resolve_precision(precision: str) -> str:
    """The precision `auto` stands for on this machine: the fastest one that keeps the labels.

    On a CPU that is float32: bfloat16 (AMX, AVX-512 bf16) changed the top-1 label of 7% of real
    photos with the trained EfficientNet-Lite0 (bench/precision.py), far from the 99% agreement
    asked of it, for at most 1.4x the speed. On a GPU it is mixed_float16, the precision GPUs'
    tensor cores are built for, whose 10-bit mantissa keeps three more bits than bfloat16's.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "mixed_float16" if gpus() else "float32"


def configure_tensorflow(precision: str = "auto") -> str:
    """Apply memory growth and the precision policy; call before a model is loaded. Returns the precision used."""
    tf = load_tensorflow()

    precision = resolve_precision(precision)
    for device in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:  # the GPU was initialised already; growth can no longer change
            log.debug("memory growth already fixed for %s", device.name)
    if precision == "mixed_float16" and not gpus():
        log.warning("model.precision mixed_float16 needs a GPU; none is visible, so the model runs in float32")
    tf.config.optimizer.set_experimental_options({
        "auto_mixed_precision": precision == "mixed_float16",
        "auto_mixed_precision_onednn_bfloat16": precision == "mixed_bfloat16",
    })
    return precision


def effective_batch_size(configured: int) -> int:
    """The configured batch size, or (0 = auto) a size that keeps the device busy within memory."""
    if configured:
        return configured
    return GPU_BATCH_SIZE if gpus() else CPU_BATCH_SIZE
