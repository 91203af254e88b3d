"""An indexing run, whatever reads and embeds the files: a source of prepared rows feeds a catalog writer.

    plan (scan vs catalog) -> source.rows -> Batch (linked, rejected, waiting) -> source.embed -> writer

The source is this machine's decode pool and model (indexer.local_source) or a Ray dataset
(indexer.distributed); the runner decides what each row means for the catalog, counts it, and hands
full batches to the writer, whose commit runs in a background thread while the next rows are read
and embedded. A stop request (Ctrl-C, SIGTERM) commits what is done and ends the run within
seconds; the next run resumes from there. With `reindex`, every catalog image is first embedded
again beside the current vectors and switched to (indexer.reindex).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, Protocol

from indexer.batch import Batch, R, commit_size, needs_embedding
from indexer.catalog_writer import BackgroundCommits, CatalogWriter
from indexer.plan import Plan, plan_run, record_scan_problems
from indexer.reindex import Reembedded, Reindex
from indexer.report import IndexReport, NoProgress, Progress
from indexer.scan import FoundFile, resolve_root
from storage.catalog import Catalog, NewImage
from storage.paths import printable
from storage.staging import NOT_REINDEXED, FileOfImage, ToReread
from storage.sync import check_model

log = logging.getLogger(__name__)


class RowSource(Protocol[R]):
    """Reads candidate files into rows (hashed; decoded when the catalog lacks the content) and embeds them."""

    embed_batch: int  # rows the model takes at a time; a commit holds at least this many

    def open(self) -> None:
        """Start what reads the files: called before the library is scanned, so it warms up meanwhile."""

    def close(self, stop_workers: bool) -> None:
        """Release it; `stop_workers` after a stop request or an error: do not wait for work in flight."""

    def rows(self, candidates: Sequence[FoundFile], stop: threading.Event) -> Iterator[R]:
        """One row per candidate, in order, until the candidates or (soon after `stop`) the time run out."""

    def embed(self, rows: Sequence[R]) -> list[NewImage]:
        """The images of decoded rows, embedded."""

    def reembed(self, items: Iterable[tuple[ToReread, FileOfImage]]) -> Iterator[Reembedded]:
        """A reindex's reading and embedding of images the catalog holds (see indexer.reindex)."""


class IndexRunner(Generic[R]):
    """Brings the catalog and index in step with library roots, with rows from `source` and commits by `writer`."""

    def __init__(self, catalog: Catalog, source: RowSource[R], writer: CatalogWriter, *, commit_every: int,
                 progress: Progress | None = None) -> None:
        self.catalog = catalog
        self.source = source
        self.writer = writer
        self.model_id = writer.model_id
        self.commit_every = commit_every
        self.progress: Progress = progress or NoProgress()
        self.stop = threading.Event()

    def request_stop(self) -> None:
        """Finish the current batch, commit it, publish the index and return (safe from a signal handler)."""
        self.stop.set()

    def run(self, roots: Sequence[str], reindex: bool = False, allow_empty_roots: bool = False) -> IndexReport:
        started = time.perf_counter()
        if not reindex:
            check_model(self.catalog, self.model_id)  # refused before any decode worker starts
        self.source.open()
        finished = False
        try:
            report = IndexReport()
            if reindex:
                for root in roots:  # every root checked before anything is touched
                    resolve_root(root)
                self._reindex(report, allow_empty_roots)
            if not report.interrupted:  # a reindex stopped on request: nothing else happens in this run
                check_model(self.catalog, self.model_id)
                self._index(roots, allow_empty_roots, report)
            report.seconds = time.perf_counter() - started
            finished = True
            return report
        finally:
            self.source.close(stop_workers=not finished or self.stop.is_set())

    def _reindex(self, report: IndexReport, allow_empty_roots: bool) -> None:
        """Embed every catalog image again with the configured model beside the current vectors, and switch."""
        job = Reindex(self.catalog, self.writer.store, self.model_id, self.source.reembed,
                      commit_size(self.commit_every, self.source.embed_batch), self.writer.index_config, self.stop,
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

    def _index(self, roots: Sequence[str], allow_empty_roots: bool, report: IndexReport) -> None:
        """Plan, commit the candidates' rows, remove what is gone, publish."""
        self.writer.open()
        plan = plan_run(self.catalog, roots, allow_empty_roots)
        report.unreadable = record_scan_problems(self.catalog, plan)
        self.apply(plan, report)
        self.writer.finish()

    def apply(self, plan: Plan, report: IndexReport) -> None:
        """Commit a plan's candidates, then forget the files it found gone (the writer is open; nothing is
        published). New paths are linked before old ones are forgotten: a moved file keeps its vector.
        Counts add up in `report`, so that one report can cover several plans (a watcher's batches)."""
        report.unchanged += plan.unchanged
        report.skipped += plan.skipped
        report.kept += plan.kept
        report.found += len(plan.candidates) + plan.unchanged + plan.skipped
        log.info("%d files to index, %d unchanged, %d rejected before and unchanged, %d gone",
                 len(plan.candidates), plan.unchanged, plan.skipped, len(plan.removed))
        self.progress.start(len(plan.candidates), report.found)
        self._process(plan.candidates, report)
        self.writer.count_unstored_in(report)
        report.interrupted = self.stop.is_set()
        if plan.removed and not report.interrupted:
            self.writer.remove(plan.removed)
            report.removed += len(plan.removed)

    def _process(self, candidates: Sequence[FoundFile], report: IndexReport) -> None:
        """Turn the candidates' rows into batches and commit each, the writer one batch behind."""
        if not candidates:
            return
        embed_batch = self.source.embed_batch
        commit_every = commit_size(self.commit_every, embed_batch)
        embedded: set[str] = set()  # content embedded this run (committed or not)
        batch: Batch[R] = Batch()
        with BackgroundCommits(self.writer.commit) as commits:
            for row in self.source.rows(candidates, self.stop):
                self._take(row, batch, embedded, report)
                if len(batch.waiting) >= embed_batch:
                    self._embed_waiting(batch, report)
                if batch.size >= commit_every or self.stop.is_set():
                    self._embed_waiting(batch, report)  # files may point at content still waiting: embed it first
                    commits.submit(batch)
                    batch = Batch()
                    if self.stop.is_set():
                        log.warning("stopping on request; everything so far is committed")
                        break
            self._embed_waiting(batch, report)
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

    def _embed_waiting(self, batch: Batch[R], report: IndexReport) -> None:
        waiting = batch.take_waiting()
        if not waiting:
            return
        batch.new_images.extend(self.source.embed(waiting))
        report.indexed += len(waiting)
        for _ in waiting:
            self.progress.advance("indexed")
