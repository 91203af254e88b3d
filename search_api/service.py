"""The search engine behind the HTTP API: embed a query, search the index, join the catalog.

It never writes the index: it follows the generations the indexer publishes, checking the
manifest at most once a second, and swaps in a new generation without failing requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.images import ImageRejected, decode_image
from indexer.labels import class_name
from indexer.model import Embedder, model_id, stand_in_note, top_k
from indexer.settings import Settings
from search_api import metrics
from search_api.dedupe import collapse_near_duplicates
from storage.catalog import Catalog, ImageRecord
from storage.class_rule import ClassRule
from storage.index_calibration import index_summary
from storage.index_cost import IndexMeasurements
from storage.sync import open_index
from storage.vector_index import IndexStore, Manifest, VectorIndex

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0

Embedded = tuple[np.ndarray, list[tuple[int, float]]]  # a query's feature vector and top-5 predictions


@dataclass(frozen=True)
class Hit:
    record: ImageRecord
    score: float
    # With dedupe: ids of the near-duplicate images collapsed into this one (None without dedupe).
    duplicates: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, object]:
        """The fields every search result carries, in the API and in `lookalike search --json`."""
        out: dict[str, object] = {"id": self.record.id, "path": self.record.path, "score": round(self.score, 6),
                                  "labels": labels_json(self.record.predictions)}
        if self.duplicates is not None:
            # Files with identical content are one catalog image already: its other paths are exact duplicates.
            out["duplicates"] = list(self.duplicates)
            out["paths"] = list(self.record.paths)
            out["collapsed"] = len(self.duplicates) + len(self.record.paths) - 1
        return out


@dataclass(frozen=True)
class SearchPage:
    """Results offset..offset+k of a query; `next_offset` is None on the last page."""

    hits: list[Hit]
    next_offset: int | None


@dataclass(frozen=True)
class QueryOptions:
    """How one query is filtered and paged; the same for every image of a batch."""

    k: int
    class_ids: Collection[int] | None = None
    min_score: float | None = None
    offset: int = 0
    dedupe: bool = False
    class_rule: ClassRule | None = None  # None: the configured rule


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
                loaded = self.store.load(manifest, mmap=self.settings.storage.mmap_index)
                if loaded is not None:
                    self._index, self._manifest = loaded, manifest
                    log.info("serving index generation %d (%d vectors)", manifest.generation, loaded.count)
                    metrics.record_index(loaded.count, manifest.generation)
                    return self._index
            if self._index is None:
                self._index, self._manifest = open_index(catalog, self.store, self.model_id, publish_repairs=False,
                                                         config=self.index_config)
                metrics.record_index(self._index.count if self._index else 0, self.generation())
            return self._index

    # --- queries ---------------------------------------------------------------------------

    def embed_upload(self, data: bytes) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """Feature vector and top-5 predictions of an uploaded image (raises ImageRejected)."""
        result = self.embed_uploads([data])[0]
        if isinstance(result, ImageRejected):
            raise result
        return result

    def embed_uploads(self, images: Sequence[bytes]) -> list[Embedded | ImageRejected]:
        """Per image, its vector and top-5 predictions, or why it was rejected; one model call for all."""
        started = time.perf_counter()
        size = self.settings.model.image_size
        # A small, highly compressed upload may claim hundreds of megapixels: uploads have their own cap.
        max_pixels, setting = min((self.settings.api.max_upload_pixels, "api.max_upload_pixels"),
                                  (self.settings.indexer.max_image_pixels, "indexer.max_image_pixels"))
        decoded: list[np.ndarray | ImageRejected] = []
        for data in images:
            try:
                decoded.append(decode_image(data, size, max_pixels, setting).pixels)
            except ImageRejected as exc:
                decoded.append(exc)
        good = [d for d in decoded if isinstance(d, np.ndarray)]
        embedded: list[Embedded] = []
        if good:
            out = self.embedder.embed(np.stack(good))
            embedded = list(zip(out.features, top_k(out.probabilities), strict=True))
        rows = iter(embedded)
        results = [item if isinstance(item, ImageRejected) else next(rows) for item in decoded]
        metrics.EMBED_SECONDS.observe(time.perf_counter() - started)
        return results

    def allowed_ids(self, class_ids: Collection[int] | None, rule: ClassRule | None = None) -> np.ndarray | None:
        if not class_ids:
            return None
        return self.catalog.ids_matching_classes(class_ids, rule or self.settings.search.class_rule())

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
        return self.search_page(vector, QueryOptions(k, class_ids, min_score, class_rule=class_rule), exclude_id).hits

    def search_page(self, vector: np.ndarray, options: QueryOptions, exclude_id: int | None = None) -> SearchPage:
        """One page of neighbours, best first; with dedupe, near-duplicate groups count as one result."""
        started = time.perf_counter()
        try:
            hits = self._ranked(vector, options, exclude_id)
        finally:
            metrics.SEARCH_SECONDS.observe(time.perf_counter() - started)
        end = options.offset + options.k
        return SearchPage(hits[options.offset:end], end if len(hits) > end else None)

    def _ranked(self, vector: np.ndarray, options: QueryOptions, exclude_id: int | None) -> list[Hit]:
        """At least offset+k+1 ranked hits when that many exist (one more tells that a next page exists)."""
        index = self.index()
        if index is None:
            return []
        allowed = self.allowed_ids(options.class_ids, options.class_rule)
        if allowed is not None and exclude_id is not None:
            allowed = allowed[allowed != exclude_id]
        needed = options.offset + options.k + 1
        # Ask for a few more: the excluded image, images deleted since this generation, collapsed duplicates.
        fetch = (needed + 1 + 8) * (2 if options.dedupe else 1)
        while True:
            raw = index.search(vector[None], fetch, allowed, self.index_config)[0]
            exhausted = len(raw) < fetch or fetch >= index.count
            if options.min_score is not None and raw and raw[-1][1] < options.min_score:
                exhausted = True  # scores only fall from here
            floor = -np.inf if options.min_score is None else options.min_score
            pairs = [(i, s) for i, s in raw if i != exclude_id and s >= floor]
            records = self.catalog.get_images([i for i, _ in pairs])
            hits = [Hit(records[i], s) for i, s in pairs if i in records]
            if options.dedupe:
                hits = collapse_near_duplicates(hits, self.catalog.embeddings([h.record.id for h in hits]),
                                                self.settings.search.dedupe_threshold)
            if len(hits) >= needed or exhausted:
                return hits
            fetch *= 2

    def similar(self, image_id: int, k: int, class_ids: Collection[int] | None = None,
                min_score: float | None = None, class_rule: ClassRule | None = None) -> list[Hit] | None:
        """Neighbours of an indexed image (itself excluded); None when the id is unknown."""
        page = self.similar_page(image_id, QueryOptions(k, class_ids, min_score, class_rule=class_rule))
        return None if page is None else page.hits

    def similar_page(self, image_id: int, options: QueryOptions) -> SearchPage | None:
        vector = self.catalog.embedding(image_id)
        if vector is None:
            return None
        return self.search_page(vector, options, exclude_id=image_id)

    def image(self, image_id: int) -> ImageRecord | None:
        return self.catalog.get_images([image_id]).get(image_id)

    def generation(self) -> int | None:
        return self._manifest.generation if self._manifest else None

    def stats(self) -> dict[str, object]:
        index = self.index()
        return {
            "images": self.catalog.count_images(),
            "files": self.catalog.count_files(),
            "vectors": index.count if index is not None else 0,
            "generation": self._manifest.generation if self._manifest else None,
            "model_id": self.model_id,
            "model": self.model_info(),
            **index_summary(index.factory if index is not None else None,
                            index.measured if index is not None else IndexMeasurements(), self.index_config),
        }

    def model_info(self) -> dict[str, object]:
        m = self.settings.model
        note = stand_in_note(m.handle)
        return {"handle": m.handle, "image_size": m.image_size, "id": self.model_id,
                "stand_in": note is not None, "note": note}
