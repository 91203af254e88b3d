"""Timing half of bench/custom_labels.py: learning one label, and rescoring a catalog of synthetic images.

The catalog is filled with clustered unit vectors (photo collections cluster) through bulk
inserts; a label is taught from 5 images of one cluster. Measured through the product's
LabelBook, as the API's background job and the indexer call it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select

from indexer.custom_labels import LabelBook
from indexer.label_learning import learn_label
from storage.catalog import Catalog
from storage.label_queries import ids_with_labels, member_counts, scored_members
from storage.schema import FileRow, ImageRow
from storage.sync import build_from_catalog
from storage.vector_index import IndexStore

MODEL = "bench-model@380"
CHUNK = 5_000


def clustered(n: int, dim: int, seed: int, clusters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres, and each one's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    which = rng.integers(0, clusters, n)
    vectors = centres[which] + 0.9 * rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), which


def fill(catalog: Catalog, n: int, dim: int) -> np.ndarray:
    """Insert n synthetic images (with one file each) unless the catalog holds them; returns their clusters."""
    vectors, which = clustered(n, dim, 0)
    with catalog.session() as s:
        present = int(s.scalar(select(func.count(ImageRow.id))) or 0)
    if present == n:
        return which
    if present:
        raise SystemExit(f"the bench catalog holds {present} images, not {n}: give an empty database")
    started = time.perf_counter()
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        with catalog.session() as s, s.begin():
            s.execute(insert(ImageRow), [
                {"id": i + 1, "content_hash": f"{i:064x}", "width": 640, "height": 480, "format": "JPEG",
                 "model_id": MODEL, "embedding": vectors[i].astype("<f4").tobytes()} for i in range(start, stop)])
            s.execute(insert(FileRow), [
                {"path": f"/bench/{i}.jpg", "root": "/bench", "size": 1, "mtime_ns": 1, "image_id": i + 1}
                for i in range(start, stop)])
    print(f"filled the bench catalog with {n:,} images in {time.perf_counter() - started:.0f} s")
    return which


def best_of(runs: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def published(catalog: Catalog, index_dir: Path) -> str:
    """Publish an index of the bench catalog unless one is there; returns its type."""
    store = IndexStore(index_dir)
    manifest = store.manifest()
    if manifest is None or manifest.count != catalog.count_images():
        started = time.perf_counter()
        index = build_from_catalog(catalog, MODEL)
        assert index is not None
        manifest = store.publish(index, catalog.max_image_id())
        print(f"built and published a {manifest.factory} index in {time.perf_counter() - started:.0f} s")
    return manifest.factory


def timings(n: int, dim: int, database_url: str | None, work_dir: Path) -> None:
    print(f"\nspeed: {dim}-d vectors, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    vectors, _ = clustered(2_000, dim, 2)
    positives, background = vectors[:5], vectors[5:1005]
    learn = best_of(5, lambda: learn_label(positives, np.zeros((0, dim), np.float32), background))
    print(f"learn one label (5 positives, 1,000 background images, fit + 5-fold cross-validation): "
          f"{1000 * learn:.0f} ms")
    work_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{work_dir / f'catalog-{n}-{dim}.db'}"
    catalog = Catalog(url)
    try:
        which = fill(catalog, n, dim)
        index_dir = work_dir / f"index-{catalog.engine.dialect.name}-{n}-{dim}"
        factory = published(catalog, index_dir)
        members = [int(i) for i in np.flatnonzero(which == 0)[:6] + 1]
        print(f"catalog {catalog.engine.dialect.name}, {n:,} images ({int((which == 0).sum())} in the label's "
              "cluster)")
        for source, book in ((f"the published {factory} index", LabelBook(catalog, MODEL, index_dir=index_dir)),
                             ("the catalog", LabelBook(catalog, MODEL))):
            for label in book.all():
                book.delete(label.name)
            started = time.perf_counter()
            label = book.create("bench label", members[:5])
            created = time.perf_counter() - started
            started = time.perf_counter()
            book.rescore(label.id)
            rescored = time.perf_counter() - started
            count = member_counts(catalog).get(label.id, 0)
            started = time.perf_counter()
            changed = book.change("bench label", add_positive_ids=members[5:6])
            book.rescore(changed.id)
            visible = ids_with_labels(catalog, [changed.id])
            seen = time.perf_counter() - started
            print(f"  scoring from {source}:")
            print(f"    create (learn from the catalog's vectors): {1000 * created:.0f} ms")
            print(f"    rescore every image: {rescored:.2f} s ({count} images have the label)")
            print(f"    change a label until filters see it (learn + rescore + filter query): {seen:.2f} s "
                  f"({len(visible)} images)")
            started = time.perf_counter()
            broad = book.change("bench label", threshold=1e-9)  # every image has it: the most rows to write
            book.rescore(broad.id)
            stored = scored_members(catalog, broad.id, 0, 1)[1]
            print(f"    the worst case, a label every image has: rescore {time.perf_counter() - started:.2f} s "
                  f"({stored:,} scores written)")
            book.delete("bench label")
    finally:
        catalog.close()
