"""What one query's exact scan costs, measured on the collection's own vectors where they are at hand.

An exact (Flat) index answers a query by reading every stored vector, so its cost grows with the
collection and with the machine's memory bandwidth; a fixed vector count cannot say when it gets
too slow. When a Flat index of the collection is in memory (at build time, and for the live index
at each publish), `time_exact_scan` times single-query searches of it: on one FAISS thread (a
query on a busy server gets one core, and a second OpenMP thread waiting for a busy core makes
timings erratic), back to back, taking a low percentile of the repeats, because other work on a
shared machine only ever slows a repeat down. Without an index to time, `modelled_scan_cost`
assumes a conservative memory bandwidth.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)

# One core streams float32 vectors at several GB/s on current servers (7-9 GB/s measured on the
# development machine's 2-core VM); assuming 4 GB/s errs towards approximate search.
MODEL_BYTES_PER_MS = 4e6
REPEATS = 9
MIN_SECONDS = 0.2
MAX_REPEATS = 30
PERCENTILE = 10
# An index chosen because the exact scan was too slow turns back into an exact one only once the
# scan costs less than this share of the budget: a measurement near the budget must not flip the
# index type (and retrain it) at every publish.
SHRINK_MARGIN = 0.5


@dataclass(frozen=True)
class ScanCost:
    """Milliseconds one query's exact scan takes per stored vector; `measured` False for the model."""

    ms_per_vector: float
    measured: bool

    def ms(self, count: int) -> float:
        return self.ms_per_vector * count

    def describe(self, count: int) -> str:
        how = "measured" if self.measured else "estimated at 4 GB/s"
        return f"an exact scan of {count:,} vectors takes about {self.ms(count):.2f} ms ({how})"


@contextmanager
def single_query_threads(queries: int) -> Iterator[None]:
    """Run this thread's FAISS calls on one OpenMP thread while they serve a single query.

    One query gains nothing from a second thread, and on a busy machine its parallel region waits
    for a thread that has to be woken and scheduled first: single searches of a 1,000-vector index
    took 16 ms instead of 0.2 ms that way on the 2-core development machine. The OpenMP setting
    belongs to the calling thread, so other threads' searches (batches) keep theirs.
    """
    if queries != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def modelled_scan_cost(dimension: int) -> ScanCost:
    """The cost a conservative memory-bandwidth model gives, for when no exact index is at hand."""
    return ScanCost(4 * dimension / MODEL_BYTES_PER_MS, measured=False)


def time_exact_scan(index: faiss.Index) -> float:
    """Milliseconds one query's search of `index` takes: the PERCENTILE-th percentile of at least
    REPEATS single-query searches (more while under MIN_SECONDS), on one FAISS thread."""
    query = np.full((1, index.d), 1 / math.sqrt(index.d), dtype=np.float32)  # values do not change the cost
    with single_query_threads(1):
        index.search(query, 10)  # page in what a memory-mapped or fresh index has not touched yet
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < MAX_REPEATS and (len(times) < REPEATS or time.perf_counter() - started < MIN_SECONDS):
            began = time.perf_counter()
            index.search(query, 10)
            times.append(time.perf_counter() - began)
    return float(np.percentile(np.asarray(times) * 1000, PERCENTILE))


def measured_scan_cost(index: faiss.Index) -> ScanCost:
    """The scan cost per vector of an exact index, timed on its own vectors."""
    count = max(1, int(index.ntotal))
    ms = time_exact_scan(index)
    log.info("exact scan of the collection's %s vectors of dimension %d: %.2f ms (%dth percentile, one thread)",
             f"{count:,}", index.d, ms, PERCENTILE)
    return ScanCost(ms / count, measured=True)


@dataclass(frozen=True)
class IndexMeasurements:
    """What was measured when a generation was built; its manifest keeps it."""

    nprobe: int = 0  # inverted lists visited per query, chosen for recall (0: not an IVF index, or not measured)
    recall_at_10: float | None = None  # against exact search, queries drawn from the collection (1.0: exact)
    exact_scan_ms: float | None = None  # one query's exact scan of the collection, when it was timed
