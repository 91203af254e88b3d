"""The indexing run: scan -> read+hash+decode (threads) -> embed (batches) -> write (transactions).

Decoding runs in a thread pool a bounded window ahead of the model, so Pillow (which
releases the GIL while decoding) and TensorFlow work at the same time. Content already in
the catalog (a moved, renamed or duplicated file) is linked to its image, not re-embedded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from indexer.images import DecodedImage, ImageRejected, decode_image
from indexer.model import Embedder, top_k
from indexer.scan import FoundFile, resolve_root, scan
from indexer.settings import Settings
from indexer.tf_runtime import effective_batch_size
from storage.catalog import Catalog, FileRef, NewImage
from storage.sync import build_from_catalog, check_model, needs_rebuild, open_index
from storage.vector_index import IndexStore, RemoveUnsupportedError, VectorIndex

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Progress(Protocol):
    """Receives the number of files to process, then one outcome per file: indexed, linked or failed."""

    def start(self, total: int) -> None: ...

    def advance(self, outcome: str) -> None: ...


class _NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, outcome: str) -> None:
        pass


@dataclass
class IndexReport:
    """What one run did; `to_json()` is the contract of `lookalike index --json`."""

    indexed: int = 0  # images embedded this run
    linked: int = 0  # files whose content was already embedded (moved, renamed, duplicate, touched)
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    found: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        rate = self.indexed / self.seconds if self.seconds > 0 else 0.0
        return {
            "indexed": self.indexed,
            "linked": self.linked,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": self.failed,
            "failures": self.failures,
            "found": self.found,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(rate, 2),
        }


@dataclass(frozen=True)
class Prepared:
    """A candidate file after reading: its content hash and, for new content, the decoded pixels."""

    file: FoundFile
    content_hash: str = ""
    decoded: DecodedImage | None = None
    error: str | None = None


def ordered_prefetch(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """Like pool.map, but at most `window` items are in flight, so memory stays bounded."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class LibraryIndexer:
    """Brings the catalog and index in step with the files under some library roots."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        store: IndexStore,
        model_id: str,
        load_embedder: Callable[[], Embedder],
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.model_id = model_id
        self._load_embedder = load_embedder
        self._embedder: Embedder | None = None
        self.progress: Progress = progress or _NoProgress()
        self.index: VectorIndex | None = None
        self.index_config = settings.storage.index_config()
        self._dirty = False
        self._rebuild_reason: str | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._load_embedder()
            if self._embedder.model_id != self.model_id:
                raise RuntimeError(f"loaded model {self._embedder.model_id}, expected {self.model_id}")
        return self._embedder

    def plan(self, roots: Sequence[str]) -> tuple[list[FoundFile], list[str], int]:
        """(new or changed files, paths that disappeared, number of unchanged files)."""
        resolved = [resolve_root(r) for r in roots]  # every root checked before anything is touched
        candidates: list[FoundFile] = []
        removed: list[str] = []
        unchanged = 0
        for root in resolved:
            known = self.catalog.files_under(str(root))
            seen: set[str] = set()
            for found in scan(root):
                seen.add(found.path)
                state = known.get(found.path)
                if state is not None and state.size == found.size and state.mtime_ns == found.mtime_ns:
                    unchanged += 1
                else:
                    candidates.append(found)
            removed.extend(sorted(set(known) - seen))
        return candidates, removed, unchanged

    def _prepare(self, found: FoundFile) -> Prepared:
        try:
            data = Path(found.path).read_bytes()
        except OSError as exc:
            return Prepared(found, error=f"cannot read file: {exc.strerror or exc}")
        digest = hashlib.sha256(data).hexdigest()
        if self.catalog.ids_for_hashes([digest]):
            return Prepared(found, digest)
        try:
            decoded = decode_image(data, self.settings.model.image_size, self.settings.indexer.max_image_pixels)
        except ImageRejected as exc:
            return Prepared(found, digest, error=str(exc))
        return Prepared(found, digest, decoded)

    def run(self, roots: Sequence[str], reindex: bool = False) -> IndexReport:
        started = time.perf_counter()
        if reindex:
            log.warning("re-indexing: forgetting every image in the catalog")
            self.catalog.clear()
        check_model(self.catalog, self.model_id)
        self.index, _ = open_index(self.catalog, self.store, self.model_id, publish_repairs=True,
                                   config=self.index_config)
        candidates, removed, unchanged = self.plan(roots)
        report = IndexReport(unchanged=unchanged, found=len(candidates) + unchanged)
        log.info("%d files to index, %d unchanged, %d gone", len(candidates), unchanged, len(removed))
        self.progress.start(len(candidates))
        self._process(candidates, report)
        # A known file that changed into something unreadable no longer holds its old image.
        stale = removed + [f["path"] for f in report.failures]
        if stale:
            _, orphans = self.catalog.apply(removed_paths=stale)
            self._index_changes([], None, orphans)
        report.removed = len(removed)
        self._rebuild_if_needed()
        if self._dirty and self.index is not None:
            self.store.publish(self.index, self.catalog.max_image_id())
        report.seconds = time.perf_counter() - started
        return report

    def _process(self, candidates: list[FoundFile], report: IndexReport) -> None:
        if not candidates:
            return
        batch_size = effective_batch_size(self.settings.model.batch_size)
        commit_every = max(self.settings.indexer.commit_every, batch_size)
        workers = self.settings.indexer.effective_decode_workers()
        files: list[FileRef] = []
        to_embed: list[Prepared] = []
        new_images: list[NewImage] = []
        pending_hashes: set[str] = set()  # content embedded this run (committed or not)
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
            for item in ordered_prefetch(pool, self._prepare, candidates, window=2 * batch_size + workers):
                if item.error is not None:
                    report.failed += 1
                    report.failures.append({"path": item.file.path, "error": item.error})
                    log.info("rejected %s: %s", item.file.path, item.error)
                    self.progress.advance("failed")
                    continue
                f = item.file
                files.append(FileRef(f.path, f.root, f.size, f.mtime_ns, item.content_hash))
                if item.decoded is None or item.content_hash in pending_hashes:
                    report.linked += 1
                    self.progress.advance("linked")
                else:
                    pending_hashes.add(item.content_hash)
                    to_embed.append(item)
                if len(to_embed) >= batch_size:
                    new_images.extend(self._embed(to_embed, report))
                    to_embed = []
                if len(files) >= commit_every:
                    # Files may point at content still waiting for its batch: embed it first.
                    new_images.extend(self._embed(to_embed, report))
                    to_embed = []
                    self._commit(new_images, files)
                    files, new_images = [], []
            new_images.extend(self._embed(to_embed, report))
            self._commit(new_images, files)

    def _embed(self, items: list[Prepared], report: IndexReport) -> list[NewImage]:
        if not items:
            return []
        pixels = np.stack([item.decoded.pixels for item in items if item.decoded is not None])
        out = self.embedder.embed(pixels)
        predictions = top_k(out.probabilities, 5)
        report.indexed += len(items)
        for _ in items:
            self.progress.advance("indexed")
        return [
            NewImage(
                content_hash=item.content_hash,
                width=item.decoded.width,
                height=item.decoded.height,
                format=item.decoded.format,
                model_id=self.model_id,
                embedding=vector,
                predictions=preds,
            )
            for item, vector, preds in zip(items, out.features, predictions, strict=True)
            if item.decoded is not None
        ]

    def _commit(self, new_images: list[NewImage], files: list[FileRef]) -> None:
        if not new_images and not files:
            return
        ids, orphans = self.catalog.apply(new_images=new_images, files=files)
        vectors = np.stack([img.embedding for img in new_images]) if new_images else None
        self._index_changes(ids, vectors, orphans)

    def _index_changes(self, ids: list[int], vectors: np.ndarray | None, orphans: list[int]) -> None:
        """Apply committed catalog changes to the live index, or note why it must be rebuilt instead."""
        if vectors is not None and len(ids):
            if self.index is None:
                self._rebuild_reason = "no index yet"
            elif self._rebuild_reason is None:
                self.index.add(np.asarray(ids, dtype=np.int64), vectors)
            self._dirty = True
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
