"""Queries whose bytes are already in the library: their vector and predictions, read instead of computed.

An uploaded query whose SHA-256 equals an indexed image's content hash would make the model compute
what the catalog already holds (vectors and predictions are derived only from the bytes whose hash is
stored). Reading them back costs a primary-key lookup instead of a decode and a model run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from storage.catalog import Catalog
from storage.schema import ImageRow, PredictionRow
from storage.vector_index import usable

# Hashes per catalog query (well below every database's limit on bound parameters).
HASHES_PER_QUERY = 500


@dataclass(frozen=True)
class StoredQuery:
    """What the model computed when the image was indexed, and its pixel count (for the upload limits)."""

    image_id: int
    vector: np.ndarray  # float32 [D], finite and unit-norm
    predictions: list[tuple[int, float]]  # (class_id, probability), best first
    width: int
    height: int


def stored_queries(catalog: Catalog, content_hashes: Iterable[str], model_id: str) -> dict[str, StoredQuery]:
    """Per content hash held by an image of `model_id`, its stored vector and predictions.

    Images of another model (a reindex in progress) and damaged vectors are left out: the caller
    embeds those queries with the model, as any other upload.
    """
    wanted = sorted(set(content_hashes))
    found: dict[str, StoredQuery] = {}
    with catalog.session() as s:
        for start in range(0, len(wanted), HASHES_PER_QUERY):
            chunk = wanted[start:start + HASHES_PER_QUERY]
            rows = s.execute(
                select(ImageRow.id, ImageRow.content_hash, ImageRow.embedding, ImageRow.width, ImageRow.height)
                .where(ImageRow.content_hash.in_(chunk), ImageRow.model_id == model_id)
            ).all()
            if not rows:
                continue
            predictions: dict[int, list[tuple[int, float]]] = {r.id: [] for r in rows}
            for p in s.execute(select(PredictionRow.image_id, PredictionRow.class_id, PredictionRow.probability)
                               .where(PredictionRow.image_id.in_(list(predictions)))
                               .order_by(PredictionRow.image_id, PredictionRow.rank)):
                predictions[p.image_id].append((int(p.class_id), float(p.probability)))
            for r in rows:
                vector = np.frombuffer(r.embedding, dtype="<f4").astype(np.float32)
                if vector.size and usable(vector[None])[0]:
                    found[r.content_hash] = StoredQuery(r.id, vector, predictions[r.id], r.width, r.height)
    return found
