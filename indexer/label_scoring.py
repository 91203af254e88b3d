"""Scoring the library for a custom label: from the published index where it can be scanned, else
from the catalog's vectors; the examples' own scores are set by the user's word."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.catalog import Catalog
from storage.label_scan import index_scores, iter_vectors, published_vectors
from storage.labels import StoredLabel

Examples = tuple[set[int], set[int]]  # image ids of the positive and of the negative examples


def score_library(catalog: Catalog, model_id: str, index_dir: Path | None, label: StoredLabel, max_id: int,
                  floor: float, examples: Examples) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of every image up to `max_id` scoring at least `floor`: the images of the published
    generation by a scan of the index (when it can be scanned), the newer ones from the catalog."""
    assert label.weights is not None
    published = published_vectors(index_dir, catalog, model_id) if index_dir else None
    parts = []
    start = 0
    if published is not None and published.index.dimension == len(label.weights):
        parts.append(index_scores(published.index, label.weights, label.bias, floor))
        start = published.high_water
    for ids, vectors in iter_vectors(catalog, start, max_id):
        scores = vector_scores(label, vectors)
        keep = scores >= floor
        parts.append((ids[keep], scores[keep]))
    ids, scores = joined(parts)
    return with_examples(ids, scores, examples, 0, max_id)


def with_examples(ids: np.ndarray, scores: np.ndarray, examples: Examples, after_id: int,
                  up_to_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The user's word decides for examples: a positive scores 1 (and is stored whatever the model
    said), a negative 0 (not stored); only examples with after_id < id <= up_to_id are concerned."""
    positives, negatives = examples
    positives = {i for i in positives if after_id < i <= up_to_id}
    decided = positives | negatives
    keep = ~np.isin(ids, np.fromiter(decided, np.int64, len(decided)))
    extra = np.fromiter(sorted(positives), np.int64, len(positives))
    return (np.concatenate([ids[keep], extra]).astype(np.int64),
            np.concatenate([scores[keep], np.ones(len(extra), np.float32)]).astype(np.float32))


def vector_scores(label: StoredLabel, vectors: np.ndarray) -> np.ndarray:
    """The label's scores of `vectors` (zeros for vectors of another dimension)."""
    assert label.weights is not None
    if vectors.shape[1] != len(label.weights):
        return np.zeros(len(vectors), np.float32)
    logits = vectors @ label.weights + np.float32(label.bias)
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)


def joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    return (np.concatenate([p[0] for p in parts]).astype(np.int64),
            np.concatenate([p[1] for p in parts]).astype(np.float32))
