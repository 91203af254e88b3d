"""The indexing run: scan -> read+hash+decode (worker processes) -> embed (batches) -> write (background).

Decoding runs in worker processes a bounded window ahead of the model, so decoding and
TensorFlow use the cores at the same time; catalog commits run in a background thread while
the next batch is embedded. Content already in the catalog (a moved, renamed or duplicated
file) is linked to its image, not re-embedded. A stop request (Ctrl-C) ends the run after the
current batch is committed, so the next run resumes from there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from indexer.batch import Batch, R, commit_size, needs_embedding
from indexer.catalog_writer import BackgroundCommits, CatalogWriter
from indexer.model import Embedder, top_k
from indexer.plan import Plan, plan_run, record_scan_problems
from indexer.prepare import PrepareConfig, Prepared, close_decode_pool, decode_pool, ordered_prefetch
from indexer.reindex import Reembed, Reindex, local_reembed
from indexer.report import IndexReport, NoProgress, Progress
from indexer.scan import FoundFile, resolve_root
from indexer.settings import Settings
from indexer.tf_runtime import effective_batch_size
from storage.catalog import Catalog, NewImage
from storage.paths import printable
from storage.staging import NOT_REINDEXED
from storage.sync import check_model
from storage.vector_index import IndexStore

__all__ = ["IndexReport", "LibraryIndexer", "Plan", "Progress"]

log = logging.getLogger(__name__)


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
        self.progress: Progress = progress or NoProgress()
        self.index_config = settings.storage.index_config()
        self.writer = CatalogWriter.from_settings(settings, catalog, store, model_id)
        self._stop = threading.Event()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._load_embedder()
            if self._embedder.model_id != self.model_id:
                raise RuntimeError(f"loaded model {self._embedder.model_id}, expected {self.model_id}")
        return self._embedder

    def request_stop(self) -> None:
        """Finish the current batch, commit it, publish the index and return (safe from a signal handler)."""
        self._stop.set()

    def plan(self, roots: Sequence[str], allow_empty_roots: bool = False) -> Plan:
        """Scan every root and compare it with the catalog; nothing is written (see indexer.plan)."""
        return plan_run(self.catalog, roots, allow_empty_roots)

    def run(self, roots: Sequence[str], reindex: bool = False, allow_empty_roots: bool = False) -> IndexReport:
        started = time.perf_counter()
        if not reindex:
            check_model(self.catalog, self.model_id)  # refused before any decode worker starts
        workers = self.settings.indexer.effective_decode_workers()
        pool, prepare = decode_pool(self._prepare_config(), workers, self.settings.indexer.decode_in_processes)
        finished = False
        try:
            batch = effective_batch_size(self.settings.model.batch_size)
            window = 2 * batch + workers
            report = self._begin(roots, reindex, allow_empty_roots,
                                 lambda: local_reembed(pool, prepare, window, lambda: self.embedder, batch))
            report = self._run(roots, allow_empty_roots, started,
                               lambda candidates, report: self._process(candidates, report, pool, prepare, workers),
                               report)
            finished = True
            return report
        finally:
            close_decode_pool(pool, stop_workers=not finished or self._stop.is_set())

    def _begin(self, roots: Sequence[str], reindex: bool, allow_empty_roots: bool,
               reembed: Callable[[], Reembed]) -> IndexReport:
        """The run's report. With `reindex`, first every catalog image is embedded again with the configured
        model beside the current vectors, and switched to; then a catalog of another model is refused."""
        report = IndexReport()
        if reindex:
            for root in roots:  # every root checked before anything is touched
                resolve_root(root)
            self._reindex(report, reembed(), allow_empty_roots)
        if not report.interrupted:
            check_model(self.catalog, self.model_id)
        return report

    def _reindex(self, report: IndexReport, reembed: Reembed, allow_empty_roots: bool) -> None:
        commit_every = max(self.settings.indexer.commit_every, effective_batch_size(self.settings.model.batch_size))
        job = Reindex(self.catalog, self.store, self.model_id, reembed, commit_every, self.index_config, self._stop,
                      self.progress.advance)
        todo, total = job.todo()
        log.warning("re-indexing %d of %d images with model %s beside the current vectors, which keep serving "
                    "until the switch", todo, total, self.model_id)
        self.progress.start(todo, total)
        done = job.run(allow_empty_roots)
        report.indexed += done.reembedded
        report.reindexed, report.reindex_resumed = done.reembedded, done.resumed
        report.not_reindexed = len(done.dropped)
        for image, why in done.dropped.values():
            report.failures.extend({"path": f.path, "kind": NOT_REINDEXED, "error": why} for f in image.files)
        report.interrupted = not done.switched

    def _run(self, roots: Sequence[str], allow_empty_roots: bool, started: float,
             process: Callable[[list[FoundFile], IndexReport], None], report: IndexReport) -> IndexReport:
        """Plan, hand the candidates to `process` (which commits them), remove what is gone, publish."""
        if report.interrupted:  # a reindex stopped on request: nothing else happens in this run
            report.seconds = time.perf_counter() - started
            return report
        self.writer.open()
        plan = self.plan(roots, allow_empty_roots)
        report.unchanged, report.skipped, report.kept = plan.unchanged, plan.skipped, plan.kept
        report.found = len(plan.candidates) + plan.unchanged + plan.skipped
        report.unreadable = record_scan_problems(self.catalog, plan)
        log.info("%d files to index, %d unchanged, %d rejected before and unchanged, %d gone",
                 len(plan.candidates), plan.unchanged, plan.skipped, len(plan.removed))
        self.progress.start(len(plan.candidates), report.found)
        process(plan.candidates, report)
        self.writer.count_unstored_in(report)
        report.interrupted = self._stop.is_set()
        if plan.removed and not report.interrupted:
            self.writer.remove(plan.removed)
            report.removed = len(plan.removed)
        self.writer.finish()
        report.seconds = time.perf_counter() - started
        return report

    def _prepare_config(self) -> PrepareConfig:
        return PrepareConfig(
            database_url=self.settings.storage.resolved_database_url(),
            image_size=self.settings.model.image_size,
            max_pixels=self.settings.indexer.max_image_pixels,
            data_dir=self.settings.storage.data_dir,
            thumbnail_size=self.settings.indexer.thumbnail_size,
        )

    def _process(self, candidates: list[FoundFile], report: IndexReport, pool: Executor,
                 prepare: Callable[[FoundFile], Prepared], workers: int) -> None:
        if not candidates:
            return
        batch_size = effective_batch_size(self.settings.model.batch_size)
        commit_every = commit_size(self.settings.indexer.commit_every, batch_size)
        embedded: set[str] = set()  # content embedded this run (committed or not)
        batch: Batch[Prepared] = Batch()
        with BackgroundCommits(self.writer.commit) as commits:
            for item in ordered_prefetch(pool, prepare, candidates, window=2 * batch_size + workers, stop=self._stop):
                self._take(item, batch, embedded, report)
                if len(batch.waiting) >= batch_size:
                    batch.new_images.extend(self._embed(batch.take_waiting(), report))
                if batch.size >= commit_every or self._stop.is_set():
                    # Files may point at content still waiting for its batch: embed it first.
                    batch.new_images.extend(self._embed(batch.take_waiting(), report))
                    commits.submit(batch)
                    batch = Batch()
                    if self._stop.is_set():
                        log.warning("stopping on request; everything so far is committed")
                        break
            batch.new_images.extend(self._embed(batch.take_waiting(), report))
            commits.submit(batch)

    def _take(self, row: R, batch: Batch[R], embedded: set[str], report: IndexReport) -> None:
        """Put one row into the batch, counted in the report and the progress (except what waits for the model)."""
        if row.error is not None:
            rejection = batch.reject(row)
            report.failed += 1
            report.failures.append({"path": rejection.path, "kind": rejection.kind, "error": rejection.reason})
            log.info("rejected %s: %s", printable(rejection.path), rejection.reason)
            self.progress.advance("failed")
            return
        batch.add_file(row)
        if needs_embedding(row.content_hash, row.is_decoded, embedded):
            embedded.add(row.content_hash)
            batch.waiting.append(row)
        else:
            report.linked += 1
            self.progress.advance("linked")

    def _embed(self, items: list[Prepared], report: IndexReport) -> list[NewImage]:
        if not items:
            return []
        pixels = np.stack([item.decoded.pixels for item in items if item.decoded is not None])
        out = self.embedder.embed(pixels)
        predictions = top_k(out.probabilities)
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
