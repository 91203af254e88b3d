"""The vectors a label scores: through the published FAISS index, or read back from the catalog.

A label's score is sigmoid(w . x + b), so the images at or above a floor are exactly those with
w . x >= logit(floor) - b: an inner-product range search with w as the query. FAISS scans 100,000
vectors in a fraction of a second, where reading them from the catalog takes seconds (SQLite) to
tens of seconds (PostgreSQL, whose large values are stored apart). Only index types that keep the
vectors whole (Flat, IVF...,Flat) or nearly (IVF...,SQ8: scores within about 0.01) are used, with
every inverted list visited; any other index, or one missing some of the catalog's images, is
passed over and the caller reads the catalog.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import func, select

from storage.catalog import MAX_IMAGE_ID, Catalog
from storage.index_factory import ivf_of
from storage.schema import ImageRow
from storage.vector_index import IndexStore, VectorIndex

log = logging.getLogger(__name__)

SCANNABLE = re.compile(r"^(Flat|IVF\d+,(Flat|SQ8))$")


@dataclass(frozen=True)
class PublishedVectors:
    """The current index generation and the highest image id it covers."""

    index: VectorIndex
    high_water: int


def published_vectors(index_dir: Path, catalog: Catalog, model_id: str) -> PublishedVectors | None:
    """The current generation, memory-mapped, when it is of `model_id`, of a type whose vectors can be
    scanned, and holds every catalog image up to its high water mark (it may still hold deleted ones)."""
    store = IndexStore(index_dir)
    manifest = store.manifest()
    if manifest is None or manifest.model_id != model_id or not SCANNABLE.match(manifest.factory):
        return None
    with catalog.session() as s:
        covered = int(s.scalar(select(func.count(ImageRow.id)).where(ImageRow.id <= manifest.high_water)) or 0)
    if covered > manifest.count:
        return None  # the generation lacks some images: only the catalog has them all
    index = store.load(manifest, mmap=True)
    return None if index is None else PublishedVectors(index, manifest.high_water)


def index_scores(index: VectorIndex, weights: np.ndarray, bias: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of every vector in the index whose label score is at least `floor`."""
    if index.count == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    floor = min(max(floor, 1e-9), 1 - 1e-9)
    radius = float(np.log(floor / (1 - floor))) - bias
    ivf = ivf_of(index.index)
    params = None
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = ivf.nlist  # every list: the whole index
    query = np.ascontiguousarray(weights, dtype=np.float32).reshape(1, -1)
    # FAISS keeps inner products strictly above the radius: step just below it.
    lims, products, ids = index.index.range_search(query, float(np.nextafter(np.float32(radius), -np.inf)),
                                                   params=params)
    scores = (1.0 / (1.0 + np.exp(-np.clip(products.astype(np.float64) + bias, -60, 60)))).astype(np.float32)
    keep = scores >= floor
    return ids[keep].astype(np.int64), scores[keep]


def iter_vectors(catalog: Catalog, after_id: int = 0, up_to_id: int = MAX_IMAGE_ID,
                 batch: int = 5_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, unit vectors [n, D]) of the images with after_id < id <= up_to_id, in id order.

    On PostgreSQL the rows come in the binary protocol: the text form of a 7 kB bytea costs
    twice the time to send and parse.
    """
    engine = catalog.engine
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        yield from _iter_vectors_binary(catalog, after_id, up_to_id, batch)
        return
    last = after_id
    while True:
        with engine.connect() as conn:
            rows = conn.execute(select(ImageRow.id, ImageRow.embedding)
                                .where(ImageRow.id > last, ImageRow.id <= up_to_id)
                                .order_by(ImageRow.id).limit(batch)).all()
        if not rows:
            return
        ids, vectors = _stack(rows)
        last = int(ids[-1])
        yield ids, vectors


def _iter_vectors_binary(catalog: Catalog, after_id: int, up_to_id: int,
                         batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    raw = catalog.engine.raw_connection()
    try:
        driver: Any = raw.driver_connection  # psycopg's own connection (a checked-out one is never None)
        last = after_id
        while True:
            with driver.cursor(binary=True) as cur:
                cur.execute("SELECT id, embedding FROM images WHERE id > %s AND id <= %s ORDER BY id LIMIT %s",
                            (last, up_to_id, batch))
                rows = cur.fetchall()
            driver.rollback()
            if not rows:
                return
            ids, vectors = _stack(rows)
            last = int(ids[-1])
            yield ids, vectors
    finally:
        raw.close()


def _stack(rows: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of (id, float32 little-endian bytes) rows."""
    ids = np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.empty((len(rows), len(rows[0][1]) // 4), dtype="<f4")
    for k, row in enumerate(rows):
        vectors[k] = np.frombuffer(row[1], dtype="<f4")
    return ids, vectors
