"""Search benchmark: the index `auto` chooses vs exact search, on clustered 1792-d unit vectors.

    python bench/search.py                      # 100k and 1M vectors (1M needs ~12 GB RAM, ~20 min)
    python bench/search.py --sizes 100000       # quicker

For each size, in one run: build time, bytes per vector, resident memory of the loaded index,
p50/p99 single-query latency, recall@10 against exact search (and the exact search's own
latency), then the same with a class-like filter matching 1% of the vectors (k results every
time, recall against exact filtered search).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from storage.index_factory import IndexConfig, choose_index, ivf_of  # noqa: E402
from storage.sync import TRAIN_POINTS_PER_LIST  # noqa: E402
from storage.vector_index import VectorIndex  # noqa: E402

DIM = 1792


def clustered(n: int, centres: np.ndarray, seed: int, noise: float = 0.7) -> np.ndarray:
    """Unit vectors around random cluster centres (photo collections cluster; uniform noise does not)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block = block + noise * rng.standard_normal(block.shape, dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def loaded_rss_mb(path: str) -> float:
    """Resident memory a fresh process gains by loading the index file."""
    code = ("import faiss,sys;sys.path.insert(0,sys.argv[1]);from bench.search import rss_mb;b=rss_mb();"
            "i=faiss.read_index(sys.argv[2]);print(rss_mb()-b)")
    repo = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, "-c", code, repo, path], capture_output=True, text=True, check=True)
    return float(result.stdout)


def percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1000, q))


def single_query_times(search, queries: np.ndarray) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - started)
    return times


def recall(found: list[list[tuple[int, float]]], truth: np.ndarray) -> float:
    hits = sum(len({i for i, _ in row} & set(t.tolist())) for row, t in zip(found, truth, strict=True))
    return hits / truth.size


def run(n: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(100, n // 1000), DIM), dtype=np.float32)
    vectors = clustered(n, centres, seed=1)
    queries = clustered(args.queries, centres, seed=2)
    ids = np.arange(1, n + 1, dtype=np.int64)
    config = IndexConfig(memory_budget_bytes=args.budget_mb * 2**20)
    plan = choose_index(n, DIM, config)
    print(f"\n== {n:,} vectors of dimension {DIM}: auto chose {plan.factory} ({plan.reason})")

    started = time.perf_counter()
    index = VectorIndex(DIM, "bench", factory=plan.factory)
    if not index.is_trained:
        ivf = ivf_of(index.index)
        sample = vectors[rng.choice(n, min(n, ivf.nlist * TRAIN_POINTS_PER_LIST), replace=False)]
        index.train(sample)
    train_s = time.perf_counter() - started
    for start in range(0, n, 100_000):
        index.add(ids[start:start + 100_000], vectors[start:start + 100_000])
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index.index, path)
        file_mb = os.path.getsize(path) / 2**20
        resident = loaded_rss_mb(path)
    print(f"build {build_s:.1f} s (train {train_s:.1f} s), file {file_mb:,.0f} MB = {file_mb * 2**20 / n:,.0f} "
          f"bytes/vector, resident after load {resident:,.0f} MB")

    def exact_search(q: np.ndarray) -> np.ndarray:  # brute force over the same array, no copy
        return faiss.knn(q, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]

    truth = exact_search(queries) + 1
    search_config = IndexConfig(nprobe=args.nprobe)
    found = [index.search(q[None], 10, None, search_config)[0] for q in queries]
    approx_times = single_query_times(lambda q: index.search(q, 10, None, search_config), queries)
    exact_times = single_query_times(exact_search, queries[: args.exact_queries])
    p50, p50_exact = percentile_ms(approx_times, 50), percentile_ms(exact_times, 50)
    print(f"unfiltered: recall@10 {recall(found, truth):.3f}; p50 {p50:.2f} ms, p99 "
          f"{percentile_ms(approx_times, 99):.2f} ms; exact p50 {p50_exact:.1f} ms, p99 "
          f"{percentile_ms(exact_times, 99):.1f} ms; speed-up {p50_exact / p50:.0f}x")

    allowed = np.sort(rng.choice(ids, max(10, n // 100), replace=False))
    subset = vectors[allowed - 1]
    truth_f = allowed[np.argsort(-(queries @ subset.T), axis=1)[:, :10]]
    found_f = [index.search(q[None], 10, allowed, search_config)[0] for q in queries]
    full = all(len(row) == 10 for row in found_f)
    filtered_times = single_query_times(lambda q: index.search(q, 10, allowed, search_config), queries)
    print(f"filter matching 1% ({len(allowed):,} vectors): recall@10 {recall(found_f, truth_f):.3f}, "
          f"k results every time: {full}; p50 {percentile_ms(filtered_times, 50):.2f} ms, p99 "
          f"{percentile_ms(filtered_times, 99):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=30, help="single queries timed on exact search")
    parser.add_argument("--budget-mb", type=int, default=2048, help="storage.index_memory_mb")
    parser.add_argument("--nprobe", type=int, default=16)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    for n in args.sizes:
        run(n, args)


if __name__ == "__main__":
    main()
