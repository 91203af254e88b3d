"""Query latency at every library size, in one table: an upload over HTTP vs the model alone, a
`similar` query, and the recall of the index `auto` chose.

    python bench/api_latency.py                  # 1k, 10k, 50k and 200k vectors
    python bench/api_latency.py --with-1m        # and 1M (~9 GB more under build/)
    python bench/api_latency.py --sizes 50000 --queries 60

Without MODULE it runs the B4 stand-in (random weights, the real B4 graph at 380x380; see
bench/b4_stand_in.py), building it into build/b4_random_tf1 on first use (about a minute).

For each size, a catalog of synthetic clustered 1792-d vectors (see bench/serving.py) is built
once under build/bench-clustered-<size>, and its index published by `lookalike rebuild`, so the
index type and nprobe are what `storage.index: auto` chooses on this machine (`--rebuild` builds
it again). Then `lookalike serve` (one worker, one request thread) answers, on loopback:
- uploads: 640x480 JPEGs sent one at a time over one keep-alive connection, in rounds that
  alternate with as many model-only runs (the same Embedder in this process on the same decoded
  images, batch 1), so a shared machine's drift reaches both alike; ratio = HTTP p50 / model p50;
- similar: GET /api/v1/images/<id>/similar?k=10 for random ids: no model run, index and catalog only;
- repeat: uploads of photos whose bytes are in the library (20 real JPEGs added to each catalog with
  the model's vectors, under their SHA-256), answered from the catalog with no model run, in the same
  rounds; repeat ratio = repeat p50 / HTTP p50 (target <= 0.1). Each such photo is also sent with one
  byte appended after its end (same pixels, a hash the catalog lacks: the model path) and the two
  answers are compared: same ids in the same order, scores within 1e-4.
recall@10 is the published index's, searched as the server searches it (its measured nprobe),
against exact search over the catalog, for queries the catalog does not hold, drawn from its
clusters as new photos would be; "at build" is what the build measured on the collection's own
vectors. Targets on the development machine: ratio <= 1.3 at every size, similar p50 <= 20 ms up
to 1M, recall@10 >= 0.98.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from b4_stand_in import ensure_b4_stand_in  # noqa: E402
from serving import (  # noqa: E402
    IMAGE_SIZE,
    LOOPBACK,
    catalog_dir,
    cluster_centres,
    clustered_vectors,
    ensure_catalog,
    ensure_library_photos,
    free_port,
    multipart,
    percentiles_ms,
    query_photos,
    start_server,
    stop_server,
)

from indexer.images import decode_image  # noqa: E402
from indexer.model import Embedder, configured_model_id, top_k  # noqa: E402
from indexer.settings import ModelSettings, eval_crop_fraction  # noqa: E402
from storage.catalog import Catalog  # noqa: E402
from storage.index_calibration import RecallProbe  # noqa: E402
from storage.index_factory import IndexConfig  # noqa: E402
from storage.vector_index import IndexStore  # noqa: E402

DEFAULT_SIZES = [1_000, 10_000, 50_000, 200_000]
CROP = eval_crop_fraction(IMAGE_SIZE)  # the server's default model.crop_fraction, as the indexer applies it
ROUNDS = 4


@dataclass
class Row:
    size: int
    index: str
    nprobe: int | None
    http_p50: float
    http_p99: float
    model_p50: float
    similar_p50: float
    repeat_p50: float
    repeat_same: str  # photos whose repeat answer equals the model's, e.g. "20/20"
    recall: float
    build_recall: float | None
    load: str

    @property
    def ratio(self) -> float:
        return self.http_p50 / self.model_p50

    @property
    def repeat_ratio(self) -> float:
        return self.repeat_p50 / self.http_p50


def post_search(conn: http.client.HTTPConnection, photo: bytes) -> dict:
    body, content_type = multipart(photo)
    conn.request("POST", "/api/v1/search?k=10", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise SystemExit(f"query failed: {response.status} {payload[:300]!r}")
    return dict(json.loads(payload))


def repeat_answers_match(port: int, photos: list[bytes]) -> tuple[int, float]:
    """How many photos get the same answer from the catalog (their bytes) as from the model (one byte
    appended after the JPEG's end: same pixels, another hash), and the largest score difference."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    same, worst = 0, 0.0
    for photo in photos:
        stored, computed = post_search(conn, photo), post_search(conn, photo + b"\0")
        ids = [r["id"] for r in stored["results"]] == [r["id"] for r in computed["results"]]
        diff = max((abs(a["score"] - b["score"]) for a, b in zip(stored["results"], computed["results"],
                                                                  strict=False)), default=0.0)
        worst = max(worst, diff)
        same += ids and diff <= 1e-4
    conn.close()
    return same, worst


def embed_photo(embedder: Embedder) -> Callable[[bytes], tuple[np.ndarray, list[tuple[int, float]]]]:
    """What the indexer stores for a photo: its vector and top-5 predictions."""
    def embed(photo: bytes) -> tuple[np.ndarray, list[tuple[int, float]]]:
        out = embedder.embed(decode_image(photo, IMAGE_SIZE, 50_000_000, crop_fraction=CROP).pixels[None])
        return out.features[0], top_k(out.probabilities)[0]
    return embed


def http_latencies(port: int, photos: list[bytes], count: int, first: int = 0) -> list[float]:
    """Upload latencies over a fresh keep-alive connection (the server closes idle ones after 2 s,
    and the model-only rounds in between take longer); its first, untimed request opens it."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    times = []
    for i in range(first - 1, first + count):
        body, content_type = multipart(photos[i % len(photos)])
        started = time.perf_counter()
        conn.request("POST", "/api/v1/search?k=10", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        payload = response.read()
        if i >= first:
            times.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f"query failed: {response.status} {payload[:300]!r}")
    conn.close()
    return times


def model_latencies(embedder: Embedder, pixels: list[np.ndarray], count: int, first: int = 0) -> list[float]:
    times = []
    for i in range(first, first + count):
        started = time.perf_counter()
        embedder.embed(pixels[i % len(pixels)])
        times.append(time.perf_counter() - started)
    return times


def similar_latencies(port: int, size: int, count: int, seed: int = 3) -> list[float]:
    ids = np.random.default_rng(seed).integers(1, size + 1, count)
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    times = []
    for image_id in ids.tolist():
        started = time.perf_counter()
        conn.request("GET", f"/api/v1/images/{image_id}/similar?k=10")
        response = conn.getresponse()
        payload = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f"similar failed: {response.status} {payload[:300]!r}")
    conn.close()
    return times


def held_out_recall(data_dir: Path, size: int, queries: int) -> tuple[float, float | None]:
    """recall@10 of the published index for new vectors from the catalog's clusters, and the build's figure."""
    store = IndexStore(data_dir / "index")
    manifest = store.manifest()
    index = store.load(manifest, mmap=True) if manifest is not None else None
    if manifest is None or index is None:
        raise SystemExit(f"no readable index in {data_dir / 'index'}")
    probe = RecallProbe(np.full(queries, -1), clustered_vectors(cluster_centres(size), queries, [0, 7]))
    catalog = Catalog(f"sqlite:///{(data_dir / 'catalog.db').resolve()}")
    try:
        for ids, vectors in catalog.iter_embeddings():
            probe.see(ids, vectors)
    finally:
        catalog.close()
    return probe.recall(index, IndexConfig()), manifest.recall_at_10


def served_index(port: int) -> tuple[str, int | None]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    conn.request("GET", "/api/v1/stats")
    stats = json.loads(conn.getresponse().read())
    conn.close()
    return str(stats.get("index_type")), stats.get("nprobe")


def run_size(size: int, args: argparse.Namespace, embedder: Embedder, photos: list[bytes],
             pixels: list[np.ndarray]) -> Row:
    data_dir = catalog_dir(size)
    print(f"\n== {size:,} vectors ({data_dir})", flush=True)
    ensure_catalog(args.module.resolve(), data_dir, size, rebuild=args.rebuild)
    mid = configured_model_id(ModelSettings(handle=str(args.module.resolve()), image_size=IMAGE_SIZE))  # the server's
    library = ensure_library_photos(data_dir, mid, embed_photo(embedder))
    load_before = os.getloadavg()[0]
    port = free_port()
    server = start_server(args.module.resolve(), data_dir, port, threads=1)
    try:
        index, nprobe = served_index(port)
        http_latencies(port, photos, args.warmup)
        model_latencies(embedder, pixels, args.warmup)
        http_latencies(port, library, args.warmup)
        http_times: list[float] = []
        model_times: list[float] = []
        repeat_times: list[float] = []
        per_round = max(1, args.queries // ROUNDS)
        for r in range(ROUNDS):
            http_times += http_latencies(port, photos, per_round, r * per_round)
            model_times += model_latencies(embedder, pixels, per_round, r * per_round)
            repeat_times += http_latencies(port, library, per_round, r * per_round)
        same, worst = repeat_answers_match(port, library)
        similar_latencies(port, size, args.warmup, seed=99)
        similar_times = similar_latencies(port, size, args.similar_queries)
    finally:
        stop_server(server)
    recall, build_recall = held_out_recall(data_dir, size, args.recall_queries)
    http_p50, http_p99 = percentiles_ms(http_times)
    model_p50, _ = percentiles_ms(model_times)
    similar_p50, similar_p99 = percentiles_ms(similar_times)
    repeat_p50, _ = percentiles_ms(repeat_times)
    load = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
    row = Row(size, index, nprobe, http_p50, http_p99, model_p50, similar_p50, repeat_p50, f"{same}/{len(library)}",
              recall, build_recall, load)
    print(f"{index} nprobe {nprobe}: HTTP p50 {http_p50:.1f} ms p99 {http_p99:.1f} ms; model p50 {model_p50:.1f} "
          f"ms; ratio {row.ratio:.2f}; similar p50 {similar_p50:.1f} ms p99 {similar_p99:.1f} ms; recall@10 "
          f"{recall:.3f} (at build {build_recall}); load average {load}", flush=True)
    print(f"repeat queries (bytes in the library) p50 {repeat_p50:.1f} ms vs model queries p50 {http_p50:.1f} ms: "
          f"ratio {row.repeat_ratio:.3f} (target <= 0.1); same answer as the model for {row.repeat_same} photos "
          f"(largest score difference {worst:.1e})", flush=True)
    return row


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"\n{os.cpu_count()} cores; {args.queries} uploads (640x480 JPEG) and as many model-only runs per size, "
          f"{args.similar_queries} similar queries, recall over {args.recall_queries} new vectors")
    print("| vectors | index (auto) | nprobe | HTTP p50 | HTTP p99 | model-only p50 | ratio (<= 1.3) "
          "| similar p50 (<= 20 ms) | repeat p50 | repeat ratio (<= 0.1) | same answer "
          "| recall@10 (>= 0.98) | at build | load avg |")
    print("| " + " | ".join(["---"] * 14) + " |")
    for r in rows:
        build = "-" if r.build_recall is None else f"{r.build_recall:.3f}"
        print(f"| {r.size:,} | {r.index} | {r.nprobe if r.nprobe is not None else '-'} | {r.http_p50:.1f} ms "
              f"| {r.http_p99:.1f} ms | {r.model_p50:.1f} ms | {r.ratio:.2f} | {r.similar_p50:.1f} ms "
              f"| {r.repeat_p50:.1f} ms | {r.repeat_ratio:.3f} | {r.repeat_same} "
              f"| {r.recall:.3f} | {build} | {r.load} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", type=Path, nargs="?", default=None,
                        help="TF1 Hub module of B4's compute (default: the B4 stand-in, built on first use)")
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES, help="library sizes (vectors)")
    parser.add_argument("--with-1m", action="store_true", help="add a library of 1,000,000 vectors")
    parser.add_argument("--queries", type=int, default=200, help="uploads (and model-only runs) per size")
    parser.add_argument("--similar-queries", type=int, default=200)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rebuild", action="store_true", help="publish each size's index again (`lookalike rebuild`)")
    args = parser.parse_args()
    args.module = args.module or ensure_b4_stand_in()
    sizes = sorted(set(args.sizes + ([1_000_000] if args.with_1m else [])))
    photos = query_photos(20)
    embedder = Embedder(str(args.module.resolve()), IMAGE_SIZE)
    embedder.warm_up(1)
    pixels = [decode_image(p, IMAGE_SIZE, 50_000_000, crop_fraction=CROP).pixels[None] for p in photos]
    rows = [run_size(size, args, embedder, photos, pixels) for size in sizes]
    print_table(rows, args)


if __name__ == "__main__":
    main()
