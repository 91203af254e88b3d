"""The search engine behind the HTTP API: embed a query, search the index, join the catalog.

It never writes the index: it follows the generations the indexer publishes, checking the
manifest at most once a second, and swaps in a new generation without failing requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from indexer.images import decode_image
from indexer.labels import class_name
from indexer.model import Embedder, model_id, stand_in_note, top_k
from indexer.settings import Settings
from storage.catalog import Catalog, ImageRecord
from storage.class_rule import ClassRule
from storage.sync import open_index
from storage.vector_index import IndexStore, Manifest, VectorIndex

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Hit:
    record: ImageRecord
    score: float

    def to_json(self) -> dict[str, object]:
        """The fields every search result carries, in the API and in `lookalike search --json`."""
        return {"id": self.record.id, "path": self.record.path, "score": round(self.score, 6),
                "labels": labels_json(self.record.predictions)}


def labels_json(predictions: Collection[tuple[int, float]]) -> list[dict[str, object]]:
    return [
        {"class_id": class_id, "name": class_name(class_id), "probability": round(float(prob), 6)}
        for class_id, prob in predictions
    ]


class SearchService:
    """Shared by all request threads of one worker process; the model loads on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_id = model_id(settings.model.handle, settings.model.image_size)
        self.data_dir = settings.storage.data_dir
        self.store = IndexStore(self.data_dir / "index")
        self.index_config = settings.storage.index_config()
        self._catalog: Catalog | None = None
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        self._manifest: Manifest | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    # --- components ----------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._catalog = Catalog(self.settings.storage.resolved_database_url())
            return self._catalog

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder.from_settings(self.settings.model)
            return self._embedder

    def warm_up(self) -> None:
        """Load the model, run it once and load the index, so the first query is not slow."""
        self.embedder.warm_up(1)
        self.index()

    def is_ready(self) -> bool:
        return self._embedder is not None

    def index(self) -> VectorIndex | None:
        """The current index generation, reloaded when the indexer has published a newer one."""
        now = time.monotonic()
        if self._index is not None and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return self._index
        catalog = self.catalog
        with self._lock:
            self._checked_at = now
            manifest = self.store.manifest()
            current = self._manifest.generation if self._manifest else None
            if manifest is not None and manifest.generation == current and self._index is not None:
                return self._index
            if manifest is not None and manifest.model_id == self.model_id:
                loaded = self.store.load(manifest)
                if loaded is not None:
                    self._index, self._manifest = loaded, manifest
                    log.info("serving index generation %d (%d vectors)", manifest.generation, loaded.count)
                    return self._index
            if self._index is None:
                self._index, self._manifest = open_index(catalog, self.store, self.model_id, publish_repairs=False,
                                                         config=self.index_config)
            return self._index

    # --- queries ---------------------------------------------------------------------------

    def embed_upload(self, data: bytes) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """Feature vector and top-5 predictions of an uploaded image (raises ImageRejected)."""
        decoded = decode_image(data, self.settings.model.image_size, self.settings.indexer.max_image_pixels)
        out = self.embedder.embed(decoded.pixels[None])
        return out.features[0], top_k(out.probabilities, 5)[0]

    def class_rule(self) -> ClassRule:
        """The configured rule for when an image counts as showing a class."""
        return ClassRule("top5", self.settings.search.class_min_probability)

    def allowed_ids(self, class_ids: Collection[int] | None, rule: ClassRule | None = None) -> np.ndarray | None:
        if not class_ids:
            return None
        return self.catalog.ids_matching_classes(class_ids, rule or self.class_rule())

    def search(
        self,
        vector: np.ndarray,
        k: int,
        class_ids: Collection[int] | None = None,
        min_score: float | None = None,
        exclude_id: int | None = None,
        class_rule: ClassRule | None = None,
    ) -> list[Hit]:
        """The k nearest indexed images, best first, filtered by class inside the search."""
        index = self.index()
        if index is None:
            return []
        allowed = self.allowed_ids(class_ids, class_rule)
        if allowed is not None and exclude_id is not None:
            allowed = allowed[allowed != exclude_id]
        # Ask for a few more than k: the excluded image, and images deleted since this generation.
        wanted = k + (1 if exclude_id is not None else 0) + 8
        hits = index.search(vector[None], wanted, allowed, self.index_config)[0]
        hits = [(i, s) for i, s in hits if i != exclude_id and (min_score is None or s >= min_score)]
        records = self.catalog.get_images([i for i, _ in hits])
        return [Hit(records[i], s) for i, s in hits if i in records][:k]

    def similar(self, image_id: int, k: int, class_ids: Collection[int] | None = None,
                min_score: float | None = None, class_rule: ClassRule | None = None) -> list[Hit] | None:
        """Neighbours of an indexed image (itself excluded); None when the id is unknown."""
        vector = self.catalog.embedding(image_id)
        if vector is None:
            return None
        return self.search(vector, k, class_ids, min_score, exclude_id=image_id, class_rule=class_rule)

    def image(self, image_id: int) -> ImageRecord | None:
        return self.catalog.get_images([image_id]).get(image_id)

    def stats(self) -> dict[str, object]:
        index = self.index()
        return {
            "images": self.catalog.count_images(),
            "files": self.catalog.count_files(),
            "vectors": index.count if index is not None else 0,
            "generation": self._manifest.generation if self._manifest else None,
            "model_id": self.model_id,
            "model": self.model_info(),
        }

    def model_info(self) -> dict[str, object]:
        m = self.settings.model
        note = stand_in_note(m.handle)
        return {"handle": m.handle, "image_size": m.image_size, "id": self.model_id,
                "stand_in": note is not None, "note": note}
