"""Read, hash and decode one library file: the CPU-heavy stage that runs in decode workers.

Workers are separate processes by default (started with `spawn`, so they never inherit
TensorFlow's threads), each with its own read-only view of the catalog: content that is
already embedded (a moved, renamed or duplicated file) is hashed but never decoded again.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from indexer.images import DecodedImage, ImageRejected, model_input, open_upright
from indexer.scan import FoundFile
from indexer.thumbnails import thumbnail_path, write_thumbnail
from storage.catalog import ContentLookup

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Prepared:
    """A candidate file after reading: its content hash and, for new content, the decoded pixels."""

    file: FoundFile
    content_hash: str = ""
    decoded: DecodedImage | None = None
    error_kind: str | None = None  # an ImageRejected kind, or "unreadable"
    error: str | None = None


@dataclass(frozen=True)
class PrepareConfig:
    database_url: str
    image_size: int
    max_pixels: int
    data_dir: Path
    thumbnail_size: int  # 0: no thumbnails


class FilePreparer:
    """Turns a found file into a Prepared item; one per worker process (or one shared by threads)."""

    def __init__(self, config: PrepareConfig) -> None:
        self.config = config
        self.lookup = ContentLookup(config.database_url)

    def __call__(self, found: FoundFile, decode_known: bool = False) -> Prepared:
        """`decode_known`: decode even content the catalog holds (a reindex embeds it with another model)."""
        try:
            data = Path(found.path).read_bytes()
        except OSError as exc:
            return Prepared(found, error_kind="unreadable", error=f"cannot read file: {exc.strerror or exc}")
        digest = hashlib.sha256(data).hexdigest()
        if not decode_known and self.lookup.known(digest):
            return Prepared(found, digest)
        cfg = self.config
        try:
            upright = open_upright(data, max(cfg.image_size, cfg.thumbnail_size), cfg.max_pixels)
            pixels = model_input(upright.image, cfg.image_size)
        except ImageRejected as exc:
            return Prepared(found, digest, error_kind=exc.kind, error=str(exc))
        if cfg.thumbnail_size:
            try:
                write_thumbnail(upright.image, thumbnail_path(cfg.data_dir, digest), cfg.thumbnail_size)
            except OSError as exc:  # a preview is a convenience: never fail the image over it
                log.warning("cannot write the thumbnail of %s: %s", found.path, exc)
        return Prepared(found, digest, DecodedImage(pixels, upright.width, upright.height, upright.format))


_worker_preparer: FilePreparer | None = None
WORKER_NICENESS = 5


def _init_worker(config: PrepareConfig) -> None:
    global _worker_preparer
    # Ctrl-C is for the indexer process, which stops cleanly after its current batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The model is what limits the rate on a CPU: decoding takes the cycles the model leaves idle
    # instead of slowing it down, and still gets every core the model does not use.
    os.nice(WORKER_NICENESS)
    _worker_preparer = FilePreparer(config)


def _prepare_in_worker(found: FoundFile, decode_known: bool = False) -> Prepared:
    assert _worker_preparer is not None, "decode worker started without its initializer"
    return _worker_preparer(found, decode_known)


def _ready() -> bool:
    return True


def decode_pool(
    config: PrepareConfig, workers: int, processes: bool
) -> tuple[Executor, Callable[[FoundFile], Prepared]]:
    """An executor and the function to submit to it: worker processes, or threads in this process."""
    if processes:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(config,))
        for _ in range(workers):  # start every worker now, while the caller scans the library
            pool.submit(_ready)
        return pool, _prepare_in_worker
    return ThreadPoolExecutor(workers, thread_name_prefix="decode"), FilePreparer(config)


def ordered_prefetch(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """Like pool.map, but at most `window` items are in flight, so memory stays bounded."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
