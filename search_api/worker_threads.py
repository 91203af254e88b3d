"""CPU threads per server worker: N workers share the cores instead of each assuming it has all of them.

TensorFlow and FAISS (OpenMP) each size their thread pools to every core by default; with
several gunicorn workers that oversubscribes the CPU and every query gets slower. TensorFlow's
pools can only be sized before its runtime starts, so this runs in each worker after the fork
and before the model loads.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. in containers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    return max(1, (cores or available_cores()) // max(1, workers))


def configure_worker_threads(threads: int) -> dict[str, int]:
    """Size TensorFlow's intra/inter-op pools and FAISS's OpenMP pool; returns the values in force."""
    import faiss

    from indexer.tf_runtime import load_tensorflow

    tf = load_tensorflow()

    faiss.omp_set_num_threads(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.warning("TensorFlow started before its thread pools could be sized; it keeps its defaults")
    applied = {
        "tensorflow_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tensorflow_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "faiss_omp": faiss.omp_get_max_threads(),
    }
    log.info("worker %d CPU threads: TensorFlow intra-op %d, inter-op %d, FAISS OpenMP %d",
             os.getpid(), applied["tensorflow_intra_op"], applied["tensorflow_inter_op"], applied["faiss_omp"])
    return applied
