"""The rows of a run on this machine: read, hash and decode in a pool of workers, embed with the model here.

Decoding runs in worker processes a bounded window ahead of the model, so decoding and
TensorFlow use the cores at the same time. Content already in the catalog (a moved, renamed or
duplicated file) is only hashed, never decoded. After a stop request no more files are handed
out, and a worker that does not finish within a grace period is left behind (see indexer.prepare).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor

import numpy as np

from indexer.model import Embedder, top_k
from indexer.prepare import PrepareConfig, Prepared, close_decode_pool, decode_pool, ordered_prefetch
from indexer.reindex import Reembedded, read_problem
from indexer.scan import FoundFile
from indexer.settings import Settings
from indexer.tf_runtime import effective_batch_size
from storage.catalog import NewImage
from storage.staging import FileOfImage, ToReread

log = logging.getLogger(__name__)


class LocalSource:
    """A RowSource (see indexer.runner) on this machine: a decode pool and a model loaded on first use."""

    def __init__(self, settings: Settings, model_id: str, load_embedder: Callable[[], Embedder]) -> None:
        self.model_id = model_id
        self.config = PrepareConfig.from_settings(settings)
        self.workers = settings.indexer.effective_decode_workers()
        self.in_processes = settings.indexer.decode_in_processes
        self.configured_batch = settings.model.batch_size
        self.embed_batch = 0  # known once open: an automatic size asks TensorFlow for the devices
        self._load_embedder = load_embedder
        self._embedder: Embedder | None = None
        self._pool: Executor | None = None
        self._prepare: Callable[..., Prepared] | None = None

    def open(self) -> None:
        """Start the decode workers (they warm up while the library is scanned), then size the model's batches."""
        self._pool, self._prepare = decode_pool(self.config, self.workers, self.in_processes)
        self.embed_batch = effective_batch_size(self.configured_batch)

    def close(self, stop_workers: bool) -> None:
        """Shut the pool down; with `stop_workers` (a stop request or an error) without waiting for busy workers."""
        if self._pool is not None:
            pool, self._pool, self._prepare = self._pool, None, None
            close_decode_pool(pool, stop_workers=stop_workers)

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use: a run with nothing new to embed never loads it."""
        if self._embedder is None:
            self._embedder = self._load_embedder()
            if self._embedder.model_id != self.model_id:
                raise RuntimeError(f"loaded model {self._embedder.model_id}, expected {self.model_id}")
        return self._embedder

    def rows(self, candidates: Sequence[FoundFile], stop: threading.Event) -> Iterator[Prepared]:
        pool, prepare = self._opened()
        return ordered_prefetch(pool, prepare, candidates, window=self._window(), stop=stop)

    def embed(self, rows: Sequence[Prepared]) -> list[NewImage]:
        if not rows:
            return []
        features, predictions = self._forward(rows)
        return [
            NewImage(row.content_hash, row.decoded.width, row.decoded.height, row.decoded.format, self.model_id,
                     vector, preds)
            for row, vector, preds in zip(rows, features, predictions, strict=True)
            if row.decoded is not None
        ]

    def reembed(self, items: Iterable[tuple[ToReread, FileOfImage]]) -> Iterator[Reembedded]:
        """A reindex's re-reading (of content the catalog holds, so decoded anyway) and embedding."""
        pool, prepare = self._opened()
        meta: deque[tuple[ToReread, FileOfImage]] = deque()

        def files() -> Iterator[FoundFile]:
            for image, file in items:
                meta.append((image, file))
                yield FoundFile(file.path, file.root, file.size, file.mtime_ns)

        batch: list[tuple[ToReread, FileOfImage, Prepared]] = []
        for prepared in ordered_prefetch(pool, functools.partial(prepare, decode_known=True), files(),
                                         self._window()):
            image, file = meta.popleft()
            problem = read_problem(image, prepared)
            if problem is not None:
                yield Reembedded(image, file, error=problem)
                continue
            batch.append((image, file, prepared))
            if len(batch) >= self.embed_batch:
                yield from self._reembedded(batch)
                batch = []
        yield from self._reembedded(batch)

    def _reembedded(self, batch: list[tuple[ToReread, FileOfImage, Prepared]]) -> Iterator[Reembedded]:
        if not batch:
            return
        features, predictions = self._forward([prepared for _, _, prepared in batch])
        for (image, file, _), vector, preds in zip(batch, features, predictions, strict=True):
            yield Reembedded(image, file, vector, preds)

    def _forward(self, rows: Sequence[Prepared]) -> tuple[np.ndarray, list[list[tuple[int, float]]]]:
        """One pass of the model over decoded rows: their feature vectors and top predictions."""
        out = self.embedder.embed(np.stack([row.decoded.pixels for row in rows if row.decoded is not None]))
        return out.features, top_k(out.probabilities)

    def _window(self) -> int:
        """Files in flight: two model batches ahead, plus one per worker."""
        return 2 * self.embed_batch + self.workers

    def _opened(self) -> tuple[Executor, Callable[..., Prepared]]:
        if self._pool is None or self._prepare is None:
            raise RuntimeError("the decode pool is not started: call open() first")
        return self._pool, self._prepare
