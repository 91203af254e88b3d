"""Process-wide TensorFlow settings: GPU memory growth, mixed precision, and the batch size to use.

TensorFlow places the model on a GPU by itself when one is visible. Memory growth lets the API
and the indexer share one GPU instead of the first process taking all of its memory. Mixed
precision is applied by TensorFlow's graph rewriter (Grappler), which is valid for any loaded
graph, TF1 Hub module or SavedModel alike: float16 on GPUs, bfloat16 on CPUs with oneDNN bf16
support. Outputs stay float32, and features are normalised in float32 after the model.
"""

from __future__ import annotations

import logging
from functools import lru_cache

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Measured with bench/model_speed.py on 2 CPU cores (B4, 380x380): batch 1 ran 3.2-4.0 img/s, batch 8
# 2.6, batch 32 2.1, with the least memory at batch 1: a small CPU gains nothing from batching.
CPU_BATCH_SIZE = 1
# A GPU needs larger batches to be kept busy; B4 at 380x380 and batch 64 fits in 16 GB with float32.
GPU_BATCH_SIZE = 64


@lru_cache(maxsize=1)
def gpus() -> tuple[str, ...]:
    import tensorflow as tf

    return tuple(device.name for device in tf.config.list_physical_devices("GPU"))


def configure_tensorflow(precision: str = "float32") -> None:
    """Apply memory growth and the precision policy; call before a model is loaded."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
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


def effective_batch_size(configured: int) -> int:
    """The configured batch size, or (0 = auto) a size that keeps the device busy within memory."""
    if configured:
        return configured
    return GPU_BATCH_SIZE if gpus() else CPU_BATCH_SIZE
