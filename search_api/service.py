"""The search engine behind the HTTP API: embed a query, search the index, join the catalog.

It never writes the index: it follows the generations the indexer publishes, checking the
manifest at most once a second, and swaps in a new generation without failing requests. Between
publishes it follows the catalog's tail too (storage.live_index), so an image committed by any
writer is searchable within about a second.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

import numpy as np

from indexer.images import ImageRejected
from indexer.model import Embedder, ModelUnavailableError, configured_model_id, stand_in_note, top_k
from indexer.settings import Settings
from indexer.uploads import reconcile_at_start
from search_api import metrics
from search_api.busy import ServerBusy
from search_api.dedupe import collapse_near_duplicates
from search_api.neighbours import Neighbour, QueryOptions, SearchPage
from search_api.upload_decoder import DecodeRequest, InlineDecoder, UploadDecoder
from storage.catalog import Catalog, ImageRecord
from storage.class_rule import ClassRule
from storage.errors import CatalogError, CatalogMissingError, DamagedVectorError
from storage.index_calibration import index_summary
from storage.index_cost import IndexMeasurements
from storage.label_queries import ids_with_labels, labels_of_images
from storage.live_index import LiveIndex, Tail
from storage.stored_queries import stored_queries
from storage.sync import build_from_catalog, check_model, open_index
from storage.vector_index import IndexDamagedError, IndexMismatchError, IndexStore, Manifest, VectorIndex, usable

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
# After the model failed to load, requests get that error without a new attempt for this long.
MODEL_RETRY_SECONDS = 30.0
# The first search asks the index for more than the page needs, so that one round usually suffices:
EXCLUDED_QUERY_IMAGE = 1  # similar-image queries leave the query image out of its own neighbours
REMOVED_SINCE_PUBLISHED = 8  # images removed from the catalog since the index generation was published
DEDUPE_OVERFETCH = 2  # with dedupe, near-duplicates fold into one result: fetch twice as many

Embedded = tuple[np.ndarray, list[tuple[int, float]]]  # a query's feature vector and top-5 predictions


class SearchService:
    """Shared by all request threads of one worker process; the model loads on first use."""

    def __init__(self, settings: Settings, decoder: UploadDecoder | None = None,
                 on_model_load: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_model_load = on_model_load  # called before the model loads (the command line says it takes a while)
        # Uploads are decoded in the calling thread unless the server provides its decode processes.
        self.decoder = decoder or InlineDecoder(wait_seconds=settings.api.queue_timeout)
        self._model_slots = threading.BoundedSemaphore(settings.api.model_concurrency)
        self.model_id = configured_model_id(settings.model)
        self.data_dir = settings.storage.data_dir
        self.store = IndexStore(self.data_dir / "index")
        self.index_config = settings.storage.index_config()
        self._catalog: Catalog | None = None
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        self._manifest: Manifest | None = None
        self._tail: Tail | None = None  # images committed after the served generation
        self._checked_at = 0.0
        self._model_error: tuple[str, float] | None = None  # why the model last failed to load, and when
        # One lock per component, so a slow one (the model: seconds; an index generation: as long)
        # holds up only the requests that need it, never those that only read the catalog.
        self._catalog_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._repair_lock = threading.Lock()

    # --- components ----------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        catalog = self._catalog
        if catalog is not None:
            return catalog
        with self._catalog_lock:
            if self._catalog is None:  # none yet: CatalogMissingError, and asked again next time
                self._catalog = Catalog(self.settings.storage.resolved_database_url(), create=False)
            return self._catalog

    def require_catalog(self) -> None:
        """Raise CatalogMissingError (and the like) when there is no usable catalog yet."""
        self.catalog.count_images()

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use; after a failed load, the same error for MODEL_RETRY_SECONDS."""
        embedder = self._embedder
        if embedder is not None:
            return embedder
        with self._model_lock:
            if self._embedder is None:
                self.check_model()
                if self.on_model_load is not None:
                    self.on_model_load()
                try:
                    self._embedder = Embedder.from_settings(self.settings.model)
                except ModelUnavailableError as exc:
                    self._model_error = (str(exc), time.monotonic())
                    raise
                self._model_error = None
            return self._embedder

    def check_model(self) -> None:
        """Raise ModelUnavailableError while the last attempt to load the model failed recently."""
        failed = self._model_error
        if failed is not None and time.monotonic() - failed[1] < MODEL_RETRY_SECONDS:
            raise ModelUnavailableError(failed[0])

    def warm_up(self) -> None:
        """Load the model, run it once and load the index, so the first query is not slow.

        A model that cannot load, or a catalog that is missing, damaged or of another model, is
        logged, not raised: the server stays up and answers 503 with the reason (on /readyz too)
        until the operator fixes it, and the next request tries again.
        """
        self.decoder.start()
        try:
            self.embedder.warm_up(1)
            uploads = self.settings.storage.resolved_upload_dir()
            if uploads.is_dir():  # files of uploads a crash cut short go (indexer.uploads)
                reconcile_at_start(self.settings.storage.data_dir, uploads, self.catalog)
            self.index()
        except (ModelUnavailableError, IndexMismatchError, CatalogError) as exc:
            log.error("not ready: %s", exc)

    def close(self) -> None:
        """Stop the decode processes, if any."""
        self.decoder.close()

    def is_ready(self) -> bool:
        return self._embedder is not None

    def index(self) -> VectorIndex | None:
        """The current index generation, reloaded when the indexer has published a newer one."""
        now = time.monotonic()
        if self._index is not None and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return self._index
        catalog = self.catalog
        with self._index_lock:
            self._checked_at = now
            manifest = self.store.manifest()
            current = self._manifest.generation if self._manifest else None
            if manifest is not None and manifest.generation == current and self._index is not None:
                self._follow_tail(catalog)
                return self._index
            if manifest is not None and manifest.model_id == self.model_id:
                loaded = self.store.load(manifest, mmap=self.settings.storage.mmap_index)
                if loaded is not None:
                    self._index, self._manifest = loaded, manifest
                    self._tail = Tail(loaded.dimension, self.model_id, manifest.high_water)
                    self._follow_tail(catalog)
                    log.info("serving index generation %d (%d vectors)", manifest.generation, loaded.count)
                    metrics.record_index(loaded.count, manifest.generation)
                    return self._index
            if manifest is not None and manifest.model_id != self.model_id:
                # A reindex switched the catalog to another model, or is building vectors of ours: say so
                # (IndexMismatchError) rather than answer from vectors the catalog no longer holds.
                try:
                    check_model(catalog, self.model_id)
                except IndexMismatchError:
                    self._index, self._manifest = None, None  # every request asks again until this is fixed
                    raise
            if self._index is None:
                covered = catalog.max_image_id()  # what the index built here holds at least
                self._index, self._manifest = open_index(catalog, self.store, self.model_id, publish_repairs=False,
                                                         config=self.index_config)
                self._tail = None if self._index is None else Tail(self._index.dimension, self.model_id, covered)
                metrics.record_index(self._index.count if self._index else 0, self.generation())
            self._follow_tail(catalog)
            return self._index

    def _follow_tail(self, catalog: Catalog) -> None:
        """Read the images committed since the last check into the tail (called under the index lock)."""
        if self._index is None:
            return
        if self._tail is None:
            after = self._manifest.high_water if self._manifest is not None else catalog.max_image_id()
            self._tail = Tail(self._index.dimension, self.model_id, after)
        if self._tail.follow(catalog):
            log.debug("following the catalog: %d images after generation %s", self._tail.count, self.generation())

    def follow_catalog_now(self) -> None:
        """Read the catalog's tail at the next search instead of within RELOAD_CHECK_SECONDS: after this
        worker committed an image itself, it is searchable in the very next request."""
        self._checked_at = float("-inf")
        self.index()

    def searchable(self) -> LiveIndex | None:
        """The served generation and the catalog's tail, searched as one (None before anything is indexed)."""
        generation = self.index()
        return None if generation is None else LiveIndex(generation, self._tail)

    # --- queries ---------------------------------------------------------------------------

    def embed_upload(self, data: bytes) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """Feature vector and top-5 predictions of an uploaded image (raises ImageRejected)."""
        result = self.embed_uploads([data])[0]
        if isinstance(result, ImageRejected):
            try:
                raise result
            finally:  # the raised error's traceback holds this frame: no cycle that keeps `data` alive
                del result, data
        return result

    def embed_uploads(self, images: Sequence[bytes]) -> list[Embedded | ImageRejected]:
        """Per image, its vector and top-5 predictions, or why it was rejected; one model call for all.

        An upload whose bytes are indexed (same SHA-256) is answered from its stored vector and
        predictions: the model would compute the same from the same bytes, at a hundred times the cost.
        """
        started = time.perf_counter()
        size = self.settings.model.image_size
        # A small, highly compressed upload may claim hundreds of megapixels: uploads have their own cap.
        max_pixels, setting = min((self.settings.api.max_upload_pixels, "api.max_upload_pixels"),
                                  (self.settings.indexer.max_image_pixels, "indexer.max_image_pixels"))
        # Decoded as the indexer decodes (JPEG drafted to cover the thumbnail too), so that a query of an
        # indexed file gets the very vector the catalog holds for it.
        request = DecodeRequest(size, max_pixels, setting, max(size, self.settings.indexer.thumbnail_size),
                                self.settings.model.effective_crop_fraction())
        hashes = [hashlib.sha256(data).hexdigest() for data in images]
        stored = self._stored(hashes, max_pixels)
        results: list[Embedded | ImageRejected | None] = []  # None: decoded, waiting for the model
        good: list[np.ndarray] = []
        for data, digest in zip(images, hashes, strict=True):
            if digest in stored:
                results.append(stored[digest])
                continue
            try:
                good.append(self.decoder.decode(data, request))
                results.append(None)
            except ImageRejected as exc:
                # A fresh error: the caught one's traceback and context hold every frame of this call
                # (the uploads included) in a cycle that only the garbage collector would break.
                results.append(ImageRejected(str(exc), exc.kind))
        metrics.QUERY_EMBEDDINGS.labels("catalog").inc(sum(digest in stored for digest in hashes))
        if good:
            embedder = self.embedder
            wait = self.settings.api.queue_timeout
            if not self._model_slots.acquire(timeout=wait):
                raise ServerBusy(f"the model stayed busy for {wait:g} s (api.model_concurrency, api.queue_timeout)")
            try:
                out = embedder.embed(np.stack(good))
            finally:
                self._model_slots.release()
            metrics.QUERY_EMBEDDINGS.labels("model").inc(len(good))
            rows = iter(zip(out.features, top_k(out.probabilities), strict=True))
            results = [next(rows) if item is None else item for item in results]
        metrics.EMBED_SECONDS.observe(time.perf_counter() - started)
        return [item for item in results if item is not None]

    def _stored(self, hashes: Sequence[str], max_pixels: int) -> dict[str, Embedded]:
        """Uploads whose bytes are indexed: content hash -> stored vector and predictions.

        One over the upload pixel limit is left to the decoder, which refuses it as it refuses any
        other; so does everything when there is no usable catalog (the search then says why).
        """
        try:
            found = stored_queries(self.catalog, hashes, self.model_id)
        except CatalogError as exc:
            log.debug("queries embedded by the model: %s", exc)
            return {}
        return {digest: (q.vector, list(q.predictions)) for digest, q in found.items()
                if q.width * q.height <= max_pixels}

    def allowed_ids(self, class_ids: Collection[int] | None, rule: ClassRule | None = None,
                    labels: Collection[int] = ()) -> np.ndarray | None:
        """Images of any of the classes or custom labels; None when there is no filter."""
        if not class_ids and not labels:
            return None
        ids = (self.catalog.ids_matching_classes(class_ids, rule or self.settings.search.class_rule())
               if class_ids else np.empty(0, np.int64))
        return np.union1d(ids, ids_with_labels(self.catalog, labels)) if labels else ids

    def search_page(self, vector: np.ndarray, options: QueryOptions, exclude_id: int | None = None) -> SearchPage:
        """One page of neighbours, best first; with dedupe, near-duplicate groups count as one result."""
        started = time.perf_counter()
        try:
            hits = self._ranked(vector, options, exclude_id)
        finally:
            metrics.SEARCH_SECONDS.observe(time.perf_counter() - started)
        end = options.offset + options.k
        return SearchPage(self._with_custom_labels(hits[options.offset:end]), end if len(hits) > end else None)

    def _with_custom_labels(self, hits: list[Neighbour]) -> list[Neighbour]:
        found = labels_of_images(self.catalog, [h.record.id for h in hits], self.model_id)
        return [replace(h, custom_labels=tuple(found.get(h.record.id, ()))) for h in hits]

    def _ranked(self, vector: np.ndarray, options: QueryOptions, exclude_id: int | None) -> list[Neighbour]:
        """At least offset+k+1 ranked hits when that many exist (one more tells that a next page exists)."""
        index: LiveIndex | VectorIndex | None = self.searchable()
        if index is None:
            return []
        allowed = self.allowed_ids(options.class_ids, options.class_rule, options.labels)
        if allowed is not None and exclude_id is not None:
            allowed = allowed[allowed != exclude_id]
        needed = options.offset + options.k + 1  # one past the page tells whether a next page exists
        fetch = (needed + EXCLUDED_QUERY_IMAGE + REMOVED_SINCE_PUBLISHED) * (DEDUPE_OVERFETCH if options.dedupe else 1)
        while True:
            try:
                raw = index.search(vector[None], fetch, allowed, self.index_config)[0]
            except IndexDamagedError as exc:
                generation = index.generation if isinstance(index, LiveIndex) else index
                index = LiveIndex(self._replace_damaged(generation, exc), self._tail)
                raw = index.search(vector[None], fetch, allowed, self.index_config)[0]
            exhausted = len(raw) < fetch or fetch >= index.count
            if options.min_score is not None and raw and raw[-1][1] < options.min_score:
                exhausted = True  # scores only fall from here
            floor = -np.inf if options.min_score is None else options.min_score
            pairs = [(i, s) for i, s in raw if i != exclude_id and s >= floor]
            records = self.catalog.get_images([i for i, _ in pairs])
            hits = [Neighbour(records[i], s) for i, s in pairs if i in records]
            if options.dedupe:
                hits = collapse_near_duplicates(hits, self.catalog.embeddings([h.record.id for h in hits]),
                                                self.settings.search.dedupe_threshold)
            if len(hits) >= needed or exhausted:
                return hits
            fetch *= 2  # too few survived the filters: ask again for twice as many

    def _replace_damaged(self, damaged: VectorIndex, exc: IndexDamagedError) -> VectorIndex:
        """A sound index in place of one that answered impossible scores: rebuilt from the catalog in
        memory (a server never writes the index; the next indexer run publishes a sound generation)."""
        with self._repair_lock:
            if self._index is not None and self._index is not damaged:
                return self._index  # another request repaired it meanwhile
            log.error("index generation %s is damaged (%s): rebuilding it from the catalog in memory and answering "
                      "from that; run `lookalike verify`, and `lookalike rebuild` (or the indexer) to publish a "
                      "sound generation", self.generation(), exc)
            rebuilt = build_from_catalog(self.catalog, self.model_id, self.index_config, damaged.dimension)
            if rebuilt is None:
                raise exc
            with self._index_lock:
                self._index = rebuilt  # kept until the indexer publishes a newer generation
            metrics.record_index(rebuilt.count, self.generation())
            return rebuilt

    def similar_page(self, image_id: int, options: QueryOptions) -> SearchPage | None:
        """One page of neighbours of an indexed image (itself excluded); None when the id is unknown."""
        self.index()  # a catalog of another model is refused here, with the advice every route gives
        vector = self.catalog.embedding(image_id, self.model_id)
        if vector is None:
            return None
        if not usable(vector[None])[0]:
            raise DamagedVectorError(
                f"the stored vector of image {image_id} is damaged (NaN or not of unit length), so its neighbours "
                "cannot be found. `lookalike verify` lists damaged vectors; `lookalike index --reindex PATH...` "
                "embeds the images again.")
        return self.search_page(vector, options, exclude_id=image_id)

    def image(self, image_id: int) -> ImageRecord | None:
        return self.catalog.get_images([image_id]).get(image_id)

    def generation(self) -> int | None:
        return self._manifest.generation if self._manifest else None

    def stats(self) -> dict[str, object]:
        """Counts of the catalog and the index; all zero while nothing has been indexed (no catalog yet),
        which is what a page or a monitor wants to show then (/readyz says why the server is not ready)."""
        try:
            index = self.index()
            images, files = self.catalog.count_images(), self.catalog.count_files()
        except CatalogMissingError:
            index, images, files = None, 0, 0
        return {
            "images": images,
            "files": files,
            "vectors": self._searchable(index) if index is not None else 0,
            "generation": self._manifest.generation if self._manifest else None,
            "model_id": self.model_id,
            "model": self.model_info(),
            **index_summary(index.factory if index is not None else None,
                            index.measured if index is not None else IndexMeasurements(), self.index_config),
        }

    def counts(self) -> tuple[int, int]:
        """Images in the catalog and vectors searchable now (zeros before anything is indexed): what the
        page polls while the library changes, without the rest of `stats`."""
        try:
            index, images = self.index(), self.catalog.count_images()
        except CatalogMissingError:
            return 0, 0
        return images, self._searchable(index) if index is not None else 0

    def _searchable(self, index: VectorIndex) -> int:
        """The generation's vectors and the catalog's tail that is followed beside it."""
        return index.count + (self._tail.count if self._tail is not None else 0)

    def model_info(self) -> dict[str, object]:
        m = self.settings.model
        note = stand_in_note(m.handle)
        return {"handle": m.handle, "image_size": m.image_size, "crop_fraction": m.effective_crop_fraction(),
                "id": self.model_id,
                "stand_in": note is not None, "note": note}
