"""Rescoring custom labels in the background of a worker process, and the label book of a request.

A changed label is learned inside its request (milliseconds); scoring the whole library takes
seconds at 100,000 images, so it runs in one background thread per worker process while the old
scores keep answering filters. The request waits a moment for it, so small libraries answer with
the new count at once. A rescoring left unfinished by a process that died is picked up by the
next process that lists the labels.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from flask import Flask, current_app

from indexer.custom_labels import LabelBook
from search_api.service import SearchService

log = logging.getLogger(__name__)

# How long a request that changed a label waits for its new scores before answering "scoring".
ANSWER_WAIT_SECONDS = 2.0


class LabelJobs:
    """One background thread per worker process; a label queued twice is scored once."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="label-scoring")
        self._queued: dict[int, Future[bool]] = {}
        self._lock = threading.Lock()

    def book(self) -> LabelBook:
        return LabelBook(self.service.catalog, self.service.model_id, index_dir=self.service.store.directory)

    def rescore(self, label_id: int) -> Future[bool]:
        with self._lock:
            queued = self._queued.get(label_id)
            if queued is not None and not queued.running() and not queued.done():
                return queued  # not started yet: it will read the newest version
            future = self._pool.submit(self._run, label_id)
            self._queued[label_id] = future
        future.add_done_callback(lambda done: self._forget(label_id, done))
        return future

    def _forget(self, label_id: int, done: Future[bool]) -> None:
        with self._lock:
            if self._queued.get(label_id) is done:
                del self._queued[label_id]

    def rescore_and_wait(self, label_id: int, seconds: float = ANSWER_WAIT_SECONDS) -> None:
        try:
            self.rescore(label_id).result(timeout=seconds)
        except FutureTimeout:
            pass  # still running: the answer says "scoring"

    def catch_up(self) -> None:
        """Queue every label whose scores are behind (a change whose scoring never finished)."""
        for label_id in self.book().pending():
            self.rescore(label_id)

    def _run(self, label_id: int) -> bool:
        try:
            return self.book().rescore(label_id)
        except Exception:
            log.exception("rescoring custom label %d failed; the next listing of the labels retries", label_id)
            return False

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def init_app(app: Flask, service: SearchService) -> None:
    app.extensions["lookalike.label_jobs"] = LabelJobs(service)


def label_jobs() -> LabelJobs:
    return current_app.extensions["lookalike.label_jobs"]
