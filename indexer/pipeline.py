"""Indexing on this machine: the runner (indexer.runner) fed by the local decode pool and model
(indexer.local_source), committing through a catalog writer (indexer.catalog_writer).

    scan -> read+hash+decode (worker processes) -> embed (batches) -> write (background thread)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from indexer.catalog_writer import CatalogWriter
from indexer.local_source import LocalSource
from indexer.model import Embedder
from indexer.plan import Plan, plan_run
from indexer.prepare import Prepared
from indexer.report import IndexReport, Progress
from indexer.runner import IndexRunner
from indexer.settings import Settings
from storage.catalog import Catalog
from storage.vector_index import IndexStore

__all__ = ["IndexReport", "LibraryIndexer", "Plan", "Progress"]


class LibraryIndexer:
    """Brings the catalog and index in step with the files under some library roots, on this machine."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        store: IndexStore,
        model_id: str,
        load_embedder: Callable[[], Embedder],
        progress: Progress | None = None,
    ) -> None:
        self.catalog = catalog
        self.source = LocalSource(settings, model_id, load_embedder)
        self.writer = CatalogWriter.from_settings(settings, catalog, store, model_id)
        self.runner: IndexRunner[Prepared] = IndexRunner(catalog, self.source, self.writer,
                                                         commit_every=settings.indexer.commit_every,
                                                         progress=progress)

    def request_stop(self) -> None:
        """Finish the current batch, commit it, publish the index and return (safe from a signal handler)."""
        self.runner.request_stop()

    def plan(self, roots: Sequence[str], allow_empty_roots: bool = False) -> Plan:
        """Scan every root and compare it with the catalog; nothing is written (see indexer.plan)."""
        return plan_run(self.catalog, roots, allow_empty_roots)

    def run(self, roots: Sequence[str], reindex: bool = False, allow_empty_roots: bool = False) -> IndexReport:
        """One run: with `reindex`, first every image is embedded again with the configured model."""
        return self.runner.run(roots, reindex, allow_empty_roots)
