"""Committing a batch file by file when the catalog refuses one of its rows, so that one file never
fails or loses its batch: the good files land, the bad one is recorded as `unstorable`."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

from storage.catalog import ROW_VALUE_ERRORS, Catalog, FileRef, NewImage
from storage.paths import printable
from storage.rejections import UNSTORABLE, Rejection

log = logging.getLogger(__name__)


class Counts(Protocol):
    """The counters of a run report that unstored files correct."""

    indexed: int
    linked: int
    failed: int
    failures: list[dict[str, str]]


class Unstored:
    """Files the catalog refused during a run (recorded as `unstorable` rejections instead).

    Not thread-safe: its writer (indexer.catalog_writer) calls it under its own lock."""

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

    def count_in(self, report: Counts) -> None:
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
