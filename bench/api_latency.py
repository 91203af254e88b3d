"""Single-image query latency over HTTP against `lookalike serve`, vs the model alone, in one run.

    python bench/api_latency.py                          # 100k-vector index, 200 queries
    python bench/api_latency.py --vectors 20000 --queries 50
    python bench/api_latency.py MODULE                   # another module of B4's compute (380x380)

Without MODULE it runs the B4 stand-in (random weights, the real B4 graph at 380x380; see
bench/b4_stand_in.py), building it into build/b4_random_tf1 on first use (about a minute).

A catalog of synthetic images with random 1792-d embeddings is built once in --data-dir through
the storage API, and its index published with `lookalike rebuild`. Queries are 640x480 JPEGs
sent one at a time over one keep-alive connection; the model-only figure is the same Embedder,
in this process, on the same decoded images at batch 1. Target: HTTP p50 <= 1.3x model-only p50.
"""

from __future__ import annotations

import argparse
import http.client
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from b4_stand_in import ensure_b4_stand_in  # noqa: E402
from serving import (  # noqa: E402
    IMAGE_SIZE,
    LOOPBACK,
    ensure_catalog,
    free_port,
    multipart,
    percentiles_ms,
    query_photos,
    start_server,
    stop_server,
)

from indexer.images import decode_image  # noqa: E402


def http_latencies(port: int, photos: list[bytes], rounds: int) -> list[float]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    times = []
    for i in range(rounds):
        body, content_type = multipart(photos[i % len(photos)])
        started = time.perf_counter()
        conn.request("POST", "/api/v1/search?k=10", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        payload = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f"query failed: {response.status} {payload[:300]!r}")
    conn.close()
    return times


def model_latencies(module: Path, photos: list[bytes], rounds: int) -> list[float]:
    from indexer.model import Embedder

    embedder = Embedder(str(module), IMAGE_SIZE)
    embedder.warm_up(1)
    pixels = [decode_image(p, IMAGE_SIZE, 50_000_000).pixels[None] for p in photos]
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        embedder.embed(pixels[i % len(pixels)])
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", type=Path, nargs="?", default=None,
                        help="TF1 Hub module of B4's compute (default: the B4 stand-in, built on first use)")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: build/bench-api-<vectors>")
    args = parser.parse_args()
    args.module = args.module or ensure_b4_stand_in()
    data_dir = args.data_dir or Path("build") / f"bench-api-{args.vectors}"
    ensure_catalog(args.module.resolve(), data_dir, args.vectors)
    photos = query_photos(20)
    port = free_port()
    server = start_server(args.module.resolve(), data_dir, port, threads=1)
    try:
        http_latencies(port, photos, args.warmup)
        http_times = http_latencies(port, photos, args.queries)
    finally:
        stop_server(server)
    model_times = model_latencies(args.module.resolve(), photos, args.queries + args.warmup)[args.warmup:]
    http_p50, http_p99 = percentiles_ms(http_times)
    model_p50, model_p99 = percentiles_ms(model_times)
    print(f"index: {args.vectors:,} vectors of 1792-d; {args.queries} single-image queries, 640x480 JPEG")
    print(f"HTTP search    p50 {http_p50:7.1f} ms   p99 {http_p99:7.1f} ms")
    print(f"model only     p50 {model_p50:7.1f} ms   p99 {model_p99:7.1f} ms   (batch 1, same Embedder)")
    print(f"ratio HTTP/model p50: {http_p50 / model_p50:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
