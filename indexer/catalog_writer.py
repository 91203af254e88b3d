"""The writing side of an indexing run: catalog transactions, and the live index kept in step with them.

The catalog is the truth and the FAISS index follows it: each committed batch is applied to the
live index at once (or, when the index cannot take it, noted as a reason to rebuild it from the
catalog at the end). The index is published as a new generation at the end of the run, and every
`publish_every_seconds` along the way so that a long run becomes searchable as it goes. A batch
the catalog refuses is committed file by file: one file it cannot store never fails or loses its
batch, and is recorded as `unstorable` instead.

The writer is used from two threads (commits run in a background thread while the next batch is
embedded; the run's start and end on the main one), so every public method holds its lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from indexer.batch import Batch
from indexer.custom_labels import keep_labels_up_to_date
from indexer.report import IndexReport
from indexer.thumbnails import prune_thumbnails
from storage.catalog import ROW_VALUE_ERRORS, Catalog, FileRef, NewImage
from storage.index_factory import IndexConfig
from storage.paths import printable
from storage.rejections import UNSTORABLE, Rejection
from storage.sync import build_from_catalog, needs_rebuild, open_index
from storage.vector_index import IndexStore, RemoveUnsupportedError, VectorIndex

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 3  # a batch racing another writer is re-checked and committed again


class CatalogWriter:
    """Commits a run's batches and keeps the live index, its rebuild and its publication in step."""

    def __init__(self, catalog: Catalog, store: IndexStore, model_id: str, index_config: IndexConfig, *,
                 publish_every_seconds: float = 0.0, thumbnails_of: Path | None = None,
                 merge_known_content: bool = False) -> None:
        """`thumbnails_of`: the data folder whose thumbnails are pruned when images leave the catalog.
        `merge_known_content`: content another writer (or an earlier delivery of the same batch) put in
        the catalog meanwhile is linked, not inserted again (the Ray driver, whose batches may be retried)."""
        self.catalog = catalog
        self.store = store
        self.model_id = model_id
        self.index_config = index_config
        self.publish_every_seconds = publish_every_seconds
        self.thumbnails_of = thumbnails_of
        self.merge_known_content = merge_known_content
        self.index: VectorIndex | None = None
        self._lock = threading.Lock()
        self._dirty = False  # the live index holds changes not published yet
        self._rebuild_reason: str | None = None  # why the live index cannot follow the catalog any more
        self._published_at = time.monotonic()
        self._pruned_content = False  # images left the catalog: their thumbnails may go
        self._added = 0  # images added to the catalog since the last publish
        self._unstored = Unstored()

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog, store: IndexStore, model_id: str, *,
                      merge_known_content: bool = False) -> CatalogWriter:
        return cls(catalog, store, model_id, settings.storage.index_config(),
                   publish_every_seconds=settings.indexer.publish_every_seconds,
                   thumbnails_of=settings.storage.data_dir if settings.indexer.thumbnail_size else None,
                   merge_known_content=merge_known_content)

    def open(self) -> None:
        """Load the published index, repairing (and publishing) it first when it is out of step."""
        with self._lock:
            self.index, _ = open_index(self.catalog, self.store, self.model_id, publish_repairs=True,
                                       config=self.index_config)
            self._dirty, self._rebuild_reason, self._added = False, None, 0
            self._published_at = time.monotonic()

    def publish_due(self, tail_limit: int) -> bool:
        """Whether a writer that stays open (a watcher) should publish now: nothing is searchable from a
        generation yet, `tail_limit` images were added since the last publish (servers search those
        exactly, beside the generation), or publish_every_seconds have passed with changes unpublished."""
        with self._lock:
            if not self._dirty and self._rebuild_reason is None:
                return False
            if self.index is None:
                return True
            interval = self.publish_every_seconds
            return self._added >= tail_limit or bool(interval and time.monotonic() - self._published_at >= interval)

    def commit(self, batch: Batch[Any]) -> None:
        """One catalog transaction, then the same change in the live index.

        One file the catalog cannot store never fails or loses its batch: the batch is then
        committed a file at a time, and that file is recorded as rejected instead.
        """
        if batch.waiting:
            raise ValueError(f"{len(batch.waiting)} rows still wait for the model: their files would point at "
                             "content the catalog does not hold")
        if batch.is_empty():
            return
        with self._lock:
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                try:
                    self._commit(self._new_content(batch.new_images), batch)
                    return
                except IntegrityError as exc:  # another writer inserted the same content or path meanwhile
                    if not self.merge_known_content or attempt == COMMIT_ATTEMPTS:
                        raise
                    log.warning("batch collided with another writer (%s); merging and committing again",
                                exc.orig if exc.orig is not None else exc)

    def remove(self, paths: Sequence[str]) -> None:
        """Forget files known to be gone; images no file holds any more leave the catalog and the index."""
        if not paths:
            return
        with self._lock:
            _, orphans = self.catalog.apply(removed_paths=paths)
            self._index_changes([], None, orphans)

    def count_unstored_in(self, report: IndexReport) -> None:
        """Count files the catalog refused as failed (they were counted as embedded or linked)."""
        with self._lock:
            self._unstored.count_in(report)

    def finish(self) -> None:
        """The end of a run: rebuild the index if it must be, publish it, bring custom labels and
        thumbnails in step with the catalog."""
        with self._lock:
            self._rebuild_if_needed()
            self._publish()
            keep_labels_up_to_date(self.catalog, self.model_id, "catch_up", self.store.directory)
            if self._pruned_content and self.thumbnails_of is not None:
                prune_thumbnails(self.thumbnails_of, self.catalog.content_hashes())

    def _new_content(self, new_images: list[NewImage]) -> list[NewImage]:
        """The images to insert: with `merge_known_content`, those whose content the catalog does not hold yet."""
        if not self.merge_known_content or not new_images:
            return new_images
        known = self.catalog.ids_for_hashes(img.content_hash for img in new_images)
        if known:
            log.info("%d image(s) already in the catalog (a retried batch, or another writer): linked, not "
                     "inserted", len(known))
        return [img for img in new_images if img.content_hash not in known]

    def _commit(self, new_images: list[NewImage], batch: Batch[Any]) -> None:
        files, rejected = batch.files, batch.rejected
        if not new_images and not files and not rejected:
            return
        try:
            ids, orphans = self.catalog.apply(new_images=new_images, files=files, rejected=rejected)
        except ROW_VALUE_ERRORS as exc:
            log.warning("the catalog refused a batch of %d files (%s: %s): committing them one at a time",
                        len(files) + len(rejected), type(exc).__name__, exc)
            new_images, ids, orphans = self._unstored.commit_apart(self.catalog, new_images, files, rejected)
        if ids:
            keep_labels_up_to_date(self.catalog, self.model_id, "score_new_images", self.store.directory)
        vectors = np.stack([img.embedding for img in new_images]) if new_images else None
        self._index_changes(ids, vectors, orphans)
        interval = self.publish_every_seconds
        if interval and time.monotonic() - self._published_at >= interval and self._rebuild_reason is None:
            self._publish()  # long runs become searchable as they go

    def _index_changes(self, ids: list[int], vectors: np.ndarray | None, orphans: list[int]) -> None:
        """Apply committed catalog changes to the live index, or note why it must be rebuilt instead."""
        if vectors is not None and len(ids):
            self._added += len(ids)
            if self.index is None:
                self._rebuild_reason = "no index yet"
            elif self._rebuild_reason is None:
                self.index.add(np.asarray(ids, dtype=np.int64), vectors)
            self._dirty = True
        if orphans:
            self._pruned_content = True
        if orphans and self.index is not None and self._rebuild_reason is None:
            try:
                self.index.remove(np.asarray(orphans, dtype=np.int64))
            except RemoveUnsupportedError as exc:
                self._rebuild_reason = str(exc)
            self._dirty = True

    def _rebuild_if_needed(self) -> None:
        count = self.catalog.count_images()
        reason = self._rebuild_reason
        if reason is None and self.index is not None and self._dirty:
            reason = needs_rebuild(self.index, count, self.index_config)
        if reason is None:
            return
        log.info("rebuilding the index from the catalog: %s", reason)
        dimension = self.index.dimension if self.index is not None else None
        self.index = build_from_catalog(self.catalog, self.model_id, self.index_config, dimension)
        self._dirty = True
        self._rebuild_reason = None

    def _publish(self) -> None:
        if self._dirty and self.index is not None:
            self.store.publish(self.index, self.catalog.max_image_id())
            self._dirty, self._added = False, 0
        self._published_at = time.monotonic()


class BackgroundCommits:
    """Runs commits one at a time in a thread, at most one behind the caller, in submission order."""

    def __init__(self, commit: Callable[[Batch[Any]], None]) -> None:
        self._commit = commit
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="catalog-writer")
        self._pending: Future[None] | None = None

    def __enter__(self) -> BackgroundCommits:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, batch: Batch[Any]) -> None:
        """Hand a batch over once the previous commit is done (re-raising its error)."""
        self.wait()
        if not batch.is_empty():
            self._pending = self._pool.submit(self._commit, batch)

    def wait(self) -> None:
        """Block until the last commit is done; re-raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


# --- a batch the catalog refused, committed file by file ------------------------------------------
# So that one file never fails or loses its batch: the good files land, the bad one is recorded as
# `unstorable`.


class Unstored:
    """Files the catalog refused during a run (recorded as `unstorable` rejections instead).

    Not thread-safe: its writer calls it under its own lock."""

    def __init__(self) -> None:
        self.files: list[tuple[FileRef, str]] = []
        self.images = 0  # new content none of whose files could be stored

    def commit_apart(self, catalog: Catalog, new_images: list[NewImage], files: list[FileRef],
                     rejected: list[Rejection]) -> tuple[list[NewImage], list[int], list[int]]:
        """Commit a batch file by file (each with its content when new). Returns the images that landed,
        their ids and the orphaned ids; files that cannot be stored are recorded as rejected."""
        waiting = {img.content_hash: img for img in new_images}
        landed: list[NewImage] = []
        ids: list[int] = []
        orphans: list[int] = []
        for ref in files:
            image = waiting.get(ref.content_hash)
            try:
                new_ids, gone = catalog.apply(new_images=[image] if image else [], files=[ref])
            except ROW_VALUE_ERRORS as exc:
                reason = f"the catalog cannot store this file: {type(exc).__name__}: {exc}"
                log.warning("%s: %s", printable(ref.path), reason)
                self.files.append((ref, reason))
                _record(catalog, [Rejection(ref.path, ref.root, ref.size, ref.mtime_ns, UNSTORABLE, reason)])
                continue
            if image is not None:
                del waiting[ref.content_hash]
                landed.append(image)
                ids.extend(new_ids)
            orphans.extend(gone)
        _record(catalog, rejected)
        self.images += len(waiting)
        return landed, ids, orphans

    def count_in(self, report: IndexReport) -> None:
        """Count the unstored files as failed (they were counted as embedded or linked), then forget them."""
        for ref, reason in self.files:
            report.failed += 1
            report.failures.append({"path": ref.path, "kind": UNSTORABLE, "error": reason})
        report.indexed -= self.images
        report.linked -= len(self.files) - self.images
        self.files, self.images = [], 0


def _record(catalog: Catalog, rejected: list[Rejection]) -> None:
    """Record rejections one by one; one the catalog cannot hold is kept without its size and time, or logged."""
    for rejection in rejected:
        failure: Exception | None = None
        for attempt in (rejection, replace(rejection, size=0, mtime_ns=0)):
            try:
                catalog.apply(rejected=[attempt])
                break
            except ROW_VALUE_ERRORS as exc:
                failure = exc
        else:
            log.error("cannot record the rejection of %s in the catalog: %s", printable(rejection.path), failure)
