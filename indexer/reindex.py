"""`lookalike index --reindex`: every catalog image embedded again with the configured model, beside the
live vectors, then switched to in one transaction.

The current vectors (and the published index of them) keep serving the whole time. Each image
is read again from one of its files, and only bytes that still hash to the stored content are
embedded; the new vectors are staged in the catalog a batch at a time, so a crash or Ctrl-C
loses nothing and the next `--reindex` resumes. When every image is staged or accounted for,
the new index is built and written, the catalog switches, and the generation is named.

Images whose files changed or vanished, or cannot be read, are not silently dropped: they
leave the catalog as rejections naming the reason (`lookalike errors`), and the normal pass of
the same run picks up what it can (changed files are embedded as new content).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer.batch import PreparedRow
from indexer.scan import RootError
from storage import staging
from storage.catalog import Catalog
from storage.index_factory import IndexConfig
from storage.staging import FileOfImage, StagedVector, ToReread
from storage.sync import build_from_vectors
from storage.vector_index import IndexStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reembedded:
    """One attempt at an image: the file read, and its new vector, or why there is none."""

    image: ToReread
    file: FileOfImage
    embedding: np.ndarray | None = None
    predictions: Sequence[tuple[int, float]] = ()
    error: str | None = None


# Reads each (image, file), checks the bytes still hash to the image's content, embeds them.
Reembed = Callable[[Iterable[tuple[ToReread, FileOfImage]]], Iterator[Reembedded]]


class ReindexProgress:
    """What the reindex did, for the run's report."""

    def __init__(self) -> None:
        self.reembedded = 0
        self.resumed = 0  # staged by an earlier, interrupted run
        self.dropped: dict[int, tuple[ToReread, str]] = {}  # image id -> (image, why it was not re-embedded)
        self.switched = False


def read_problem(image: ToReread, row: PreparedRow) -> str | None:
    """Why the bytes read for `image` cannot be embedded for it, or None."""
    if row.error is not None:
        return row.error
    if row.content_hash != image.content_hash:
        return "the file changed since it was indexed (its bytes are no longer the indexed content)"
    if not row.is_decoded:
        return "the file could not be decoded"
    return None


@dataclass
class Reindex:
    """Stages the configured model's vectors for every catalog image, then switches the catalog and index."""

    catalog: Catalog
    store: IndexStore
    model_id: str
    reembed: Reembed
    commit_every: int  # images staged per transaction
    index_config: IndexConfig
    stop: threading.Event
    on_outcome: Callable[[str], None] = lambda outcome: None  # "indexed" or "failed", per image
    progress: ReindexProgress = field(default_factory=ReindexProgress, init=False)

    def todo(self) -> tuple[int, int]:
        """(images still to embed, images in the catalog), after forgetting vectors staged for another model."""
        staging.discard_other_models(self.catalog, self.model_id)
        total = self.catalog.count_images()
        self.progress.resumed = staging.staged_count(self.catalog, self.model_id)
        return total - self.progress.resumed, total

    def run(self, allow_empty_roots: bool = False) -> ReindexProgress:
        """Stage every image, then switch; returns early (nothing switched) when asked to stop."""
        if self.progress.resumed:
            log.warning("resuming a reindex to %s: %d images were embedded by an earlier run", self.model_id,
                        self.progress.resumed)
        pending: list[tuple[ToReread, FileOfImage]] | Iterator[tuple[ToReread, FileOfImage]] = self._first_files()
        while True:
            retry = self._stage(pending)
            if self.stop.is_set():
                log.warning("reindex stopped on request: %d images staged so far are kept; run "
                            "`lookalike index --reindex` again to continue", staging.staged_count(self.catalog,
                                                                                                   self.model_id))
                return self.progress
            if not retry:
                break
            pending = retry
        self._refuse_if_roots_are_missing(allow_empty_roots)
        self._switch()
        return self.progress

    def _first_files(self) -> Iterator[tuple[ToReread, FileOfImage]]:
        for image in staging.unstaged(self.catalog, self.model_id):
            if image.files:
                yield image, image.files[0]
            else:
                self._give_up(image, "no file holds it")

    def _give_up(self, image: ToReread, why: str) -> None:
        self.progress.dropped[image.image_id] = (image, why)
        self.on_outcome("failed")

    def _stage(self, items: Iterable[tuple[ToReread, FileOfImage]]) -> list[tuple[ToReread, FileOfImage]]:
        """Embed and stage `items`; returns the next file to try for images whose file failed."""
        retry: list[tuple[ToReread, FileOfImage]] = []
        buffer: list[StagedVector] = []
        for done in self.reembed(items):
            if done.embedding is not None:
                buffer.append(StagedVector(done.image.image_id, done.embedding, done.predictions))
                self.progress.reembedded += 1
                self.on_outcome("indexed")
            else:
                following = done.image.files.index(done.file) + 1
                if following < len(done.image.files):
                    retry.append((done.image, done.image.files[following]))
                else:
                    self._give_up(done.image, f"{done.file.path}: {done.error}")
            if len(buffer) >= self.commit_every:
                staging.stage(self.catalog, self.model_id, buffer)
                buffer = []
                if self.stop.is_set():
                    return retry
        staging.stage(self.catalog, self.model_id, buffer)
        return retry

    def _refuse_if_roots_are_missing(self, allow_empty_roots: bool) -> None:
        """Absence is not deletion: images of a library folder that is gone or empty (an unmounted drive)
        are not dropped unless the user says so."""
        missing = sorted({f.root for image, _ in self.progress.dropped.values() for f in image.files
                          if not _folder_has_entries(f.root)})
        if missing and not allow_empty_roots:
            affected = sum(1 for image, _ in self.progress.dropped.values()
                           if any(f.root in missing for f in image.files))
            raise RootError(
                f"{affected:,} images could not be read again because {', '.join(missing)} is missing or empty "
                "(is the drive mounted?). Nothing was switched: the current model keeps serving, and the "
                f"{staging.staged_count(self.catalog, self.model_id):,} images embedded so far are kept. Mount it "
                "and run `lookalike index --reindex` again, or add --allow-empty-root to let those images go."
            )

    def _switch(self) -> None:
        """Build the new index from the staged vectors, write it, switch the catalog, then name the generation."""
        staged = staging.staged_count(self.catalog, self.model_id)
        index = build_from_vectors(lambda: staging.iter_staged(self.catalog, self.model_id), staged,
                                   self.model_id, self.index_config)
        reasons = {image_id: why for image_id, (_, why) in self.progress.dropped.items()}
        for image, why in self.progress.dropped.values():
            log.warning("not re-embedded: image %d (%s): %s", image.image_id,
                        image.files[0].path if image.files else "no file", why)

        def switch_catalog() -> None:
            staging.swap(self.catalog, self.model_id, reasons)

        if index is None:  # nothing could be embedded: the catalog switches to an empty collection
            switch_catalog()
        else:
            # After the switch the catalog holds exactly the staged images.
            self.store.publish(index, staging.max_staged_id(self.catalog, self.model_id),
                               before_manifest=switch_catalog)
        self.progress.switched = True


def _folder_has_entries(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False
