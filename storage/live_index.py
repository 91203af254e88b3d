"""A published index generation plus the catalog's tail: what a server searches between publishes.

Publishing a whole index file per new photo would be absurd at scale (a 1M-vector IVF-SQ8 file is
1.8 GB). So the generation stays the bulk, and every serving process also follows the tail of the
catalog: images committed after the generation was published (catalog ids only grow) are read
every second or so into a small exact index searched alongside. Images removed since are dropped
when results are joined with the catalog, like removals since any generation.
"""

from __future__ import annotations

import numpy as np

from storage.catalog import Catalog
from storage.index_factory import IndexConfig
from storage.vector_index import VectorIndex, usable

# Vectors read from the tail per catalog query.
TAIL_BATCH = 5_000


class Tail:
    """The images committed after a generation: an exact index of them, and the largest id it covers."""

    def __init__(self, dimension: int, model_id: str, after: int) -> None:
        self.index = VectorIndex(dimension, model_id, factory="Flat")
        self.after = after  # the largest catalog id that the generation or this tail holds

    @property
    def count(self) -> int:
        return self.index.count

    def follow(self, catalog: Catalog) -> int:
        """Add the images committed since the last call (of this model; damaged vectors left out); how many."""
        added = 0
        while True:
            ids, vectors = catalog.embeddings_after(self.after, self.index.model_id, TAIL_BATCH)
            if not len(ids):
                return added
            keep = usable(vectors)
            self.index.add(ids[keep], vectors[keep])
            self.after = int(ids[-1])
            added += int(keep.sum())
            if len(ids) < TAIL_BATCH:
                return added


class LiveIndex:
    """Searches a generation and its tail as one index: the same `search` as VectorIndex, merged by score."""

    def __init__(self, generation: VectorIndex, tail: Tail | None) -> None:
        self.generation = generation
        self.tail = tail if tail is not None and tail.count else None

    @property
    def count(self) -> int:
        return self.generation.count + (self.tail.count if self.tail is not None else 0)

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None,
               config: IndexConfig | None = None) -> list[list[tuple[int, float]]]:
        found = self.generation.search(queries, k, allowed_ids, config)
        if self.tail is None:
            return found
        return [merged[:k] for merged in _merge(found, self.tail.index.search(queries, k, allowed_ids, config))]

    def range_search(self, queries: np.ndarray, min_score: float,
                     config: IndexConfig | None = None) -> list[list[tuple[int, float]]]:
        """Per query, every (id, score) with score >= `min_score` in the generation or the tail, best first."""
        found = self.generation.range_search(queries, min_score, config)
        if self.tail is None:
            return found
        return _merge(found, self.tail.index.range_search(queries, min_score, config))


def _merge(older: list[list[tuple[int, float]]],
           newer: list[list[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
    """Per query, the hits of both, best first; an image re-published meanwhile may be in both: its best counts."""
    merged = []
    for old, new in zip(older, newer, strict=True):
        best: dict[int, float] = {}
        for image_id, score in old + new:
            best[image_id] = max(score, best.get(image_id, -np.inf))
        merged.append(sorted(best.items(), key=lambda pair: -pair[1]))
    return merged
