"""Sustained concurrent query load against `lookalike serve`, on loopback only, for a bounded time.

    python bench/load.py --seconds 30 --concurrency 4
    python bench/load.py --data-dir build/bench-clustered-200000 --seconds 60

Starts `lookalike serve` (one worker, api.threads threads) on 127.0.0.1 over the synthetic
catalog that bench/api_latency.py builds (built here too when missing), then runs `--concurrency`
client threads that each send uploads and similar-image queries back to back until `--seconds`
have passed. Prints throughput, p50/p99 latency, the error count, and the server's resident
memory (all its processes) once a second.
"""

from __future__ import annotations

import argparse
import http.client
import os
import threading
import time
from pathlib import Path

import psutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from b4_stand_in import ensure_b4_stand_in  # noqa: E402
from serving import (  # noqa: E402
    LOOPBACK,
    catalog_dir,
    ensure_catalog,
    free_port,
    multipart,
    percentiles_ms,
    query_photos,
    start_server,
    stop_server,
)

MAX_SECONDS = 600


def client(port: int, photos: list[bytes], ids: int, until: float, seed: int, times: list[float],
           errors: list[str]) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    n = seed
    while time.monotonic() < until:
        n += 1
        started = time.perf_counter()
        try:
            if n % 4:
                body, content_type = multipart(photos[n % len(photos)])
                conn.request("POST", "/api/v1/search?k=10", body=body, headers={"Content-Type": content_type})
            else:
                conn.request("GET", f"/api/v1/images/{1 + (n * 7919) % ids}/similar?k=10")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"HTTP {response.status}")
            else:
                times.append(time.perf_counter() - started)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    conn.close()


def server_rss_mb(proc: psutil.Process) -> tuple[float, float]:
    """(resident, of which anonymous) MiB of the server and its workers.

    The index file is memory-mapped: its pages count as resident once queries touch them, but they
    are the page cache, shared and reclaimable. Anonymous memory is what a leak would grow.
    """
    total = anon = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_info()
        except psutil.NoSuchProcess:
            continue
        total += info.rss
        anon += info.rss - info.shared
    return total / 2**20, anon / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", type=Path, nargs="?", default=None,
                        help="TF1 Hub module of B4's compute (default: the B4 stand-in, built on first use)")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: build/bench-clustered-<vectors>")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="api.threads of the server")
    args = parser.parse_args()
    args.module = args.module or ensure_b4_stand_in()
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be from 1 to {MAX_SECONDS}")
    data_dir = args.data_dir or catalog_dir(args.vectors)
    ensure_catalog(args.module.resolve(), data_dir, args.vectors)
    port = free_port()
    server = start_server(args.module.resolve(), data_dir, port, threads=args.threads)
    photos = query_photos(20)
    times: list[float] = []
    errors: list[str] = []
    try:
        watched = psutil.Process(server.pid)
        print(f"server RSS at start: {server_rss_mb(watched)[0]:.0f} MiB; {args.concurrency} clients for "
              f"{args.seconds:.0f}s against http://{LOOPBACK}:{port}")
        started = time.monotonic()
        until = started + args.seconds
        threads = [threading.Thread(target=client, args=(port, photos, args.vectors, until, i * 1000, times, errors))
                   for i in range(args.concurrency)]
        for t in threads:
            t.start()
        rss = []
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            rss.append(server_rss_mb(watched))
            print(f"  t={time.monotonic() - started:5.1f}s  done {len(times):6d}  errors {len(errors):4d}  "
                  f"server RSS {rss[-1][0]:7.0f} MiB, anonymous {rss[-1][1]:7.0f} MiB")
        elapsed = time.monotonic() - started
    finally:
        stop_server(server)
    p50, p99 = percentiles_ms(times) if times else (float("nan"), float("nan"))
    print(f"requests {len(times)} ok, {len(errors)} errors in {elapsed:.1f}s: {len(times) / elapsed:.1f} req/s")
    anon = [a for _, a in rss]
    tenth = anon[len(anon) // 10]
    print(f"latency p50 {p50:.1f} ms  p99 {p99:.1f} ms; server RSS min {min(r for r, _ in rss):.0f} / "
          f"max {max(r for r, _ in rss):.0f} MiB (the mapped index included)")
    print(f"anonymous memory: {tenth:.0f} MiB at 10% of the run, {anon[-1]:.0f} MiB at the end "
          f"({anon[-1] - tenth:+.0f} MiB), max {max(anon):.0f} MiB")
    if errors:
        print("first errors:", errors[:5])


if __name__ == "__main__":
    main()
