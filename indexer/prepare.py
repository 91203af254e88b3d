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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from indexer.images import DecodedImage, ImageRejected, decode_side, model_input, open_upright
from indexer.library_files import NOT_A_FILE, OUTSIDE, UNREADABLE, LibraryFileError, read_library_file
from indexer.lifeline import ctrl_c_held_back, die_with_parent, ignore_ctrl_c
from indexer.scan import FoundFile
from indexer.thumbnails import thumbnail_path, write_thumbnail
from storage.catalog import ContentLookup
from storage.faults import fault_point
from storage.paths import printable

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# After a stop request (Ctrl-C, SIGTERM), how long to wait for files already being decoded.
STOP_GRACE_SECONDS = 2.0
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Prepared:
    """A candidate file after reading: its content hash and, for new content, the decoded pixels."""

    file: FoundFile
    content_hash: str = ""
    decoded: DecodedImage | None = None
    error_kind: str | None = None  # an ImageRejected kind, "not_a_file" or "unreadable"
    error: str | None = None

    @property
    def is_decoded(self) -> bool:
        """Decoded for the model: its content is not in the catalog (or a reindex asked for it)."""
        return self.decoded is not None


@dataclass(frozen=True)
class PrepareConfig:
    """What a decode worker needs: picklable, so it travels to worker processes and Ray tasks."""

    database_url: str
    image_size: int
    max_pixels: int
    data_dir: Path
    thumbnail_size: int  # 0: no thumbnails
    crop_fraction: float = 1.0  # model.crop_fraction, resolved (never "auto")

    @classmethod
    def from_settings(cls, settings: Settings) -> PrepareConfig:
        return cls(
            database_url=settings.storage.resolved_database_url(),
            image_size=settings.model.image_size,
            max_pixels=settings.indexer.max_image_pixels,
            data_dir=settings.storage.data_dir,
            thumbnail_size=settings.indexer.thumbnail_size,
            crop_fraction=settings.model.effective_crop_fraction(),
        )


class FilePreparer:
    """Turns a found file into a Prepared item; one per worker process (or one shared by threads)."""

    def __init__(self, config: PrepareConfig) -> None:
        self.config = config
        self.lookup = ContentLookup(config.database_url)

    def __call__(self, found: FoundFile, decode_known: bool = False) -> Prepared:
        """`decode_known`: decode even content the catalog holds (a reindex embeds it with another model)."""
        # Opened inside its root without following links, and never a FIFO: the file the scan saw may
        # have been swapped since. The size and time recorded are those of the bytes actually read.
        fault_point("file-read")
        try:
            read = read_library_file(found.root, found.path)
        except LibraryFileError as exc:
            kind = NOT_A_FILE if exc.kind in (NOT_A_FILE, OUTSIDE) else UNREADABLE
            return Prepared(found, error_kind=kind, error=exc.reason)
        data = read.data
        found = replace(found, size=read.stat.st_size, mtime_ns=read.stat.st_mtime_ns)
        digest = hashlib.sha256(data).hexdigest()
        if not decode_known and self.lookup.known(digest):
            return Prepared(found, digest)
        cfg = self.config
        try:
            upright = open_upright(data, max(decode_side(cfg.image_size, cfg.crop_fraction), cfg.thumbnail_size),
                                   cfg.max_pixels)
            pixels = model_input(upright.image, cfg.image_size, cfg.crop_fraction)
        except ImageRejected as exc:
            return Prepared(found, digest, error_kind=exc.kind, error=str(exc))
        if cfg.thumbnail_size:
            try:
                write_thumbnail(upright.image, thumbnail_path(cfg.data_dir, digest), cfg.thumbnail_size)
            except OSError as exc:  # a preview is a convenience: never fail the image over it
                log.warning("cannot write the thumbnail of %s: %s", printable(found.path), exc)
        return Prepared(found, digest, DecodedImage(pixels, upright.width, upright.height, upright.format))


_worker_preparer: FilePreparer | None = None
WORKER_NICENESS = 5


def _init_worker(config: PrepareConfig, parent_pid: int) -> None:
    global _worker_preparer
    die_with_parent(parent_pid)
    # Ctrl-C is for the indexer process, which stops cleanly after its current batch.
    ignore_ctrl_c()
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
        # Workers are started from this (the main) thread: the kernel's parent-death signal fires
        # when the thread that created a process ends, and the main thread lives as long as the run.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(config, os.getpid()))
        with ctrl_c_held_back():  # each submit starts a worker while none is idle: all of them, here
            for _ in range(workers):  # start every worker now, while the caller scans the library
                pool.submit(_ready)
        return pool, _prepare_in_worker
    return ThreadPoolExecutor(workers, thread_name_prefix="decode"), FilePreparer(config)


class _GaveUp(Exception):
    pass


def _result(future: Future[R], stop: threading.Event | None, grace: float) -> R:
    """The future's result; after `stop` is set, waits at most `grace` seconds more (raises _GaveUp)."""
    if stop is None:
        return future.result()
    deadline: float | None = None
    while True:
        try:
            return future.result(timeout=_POLL_SECONDS)
        except FutureTimeout:
            if stop.is_set():
                deadline = deadline or time.monotonic() + grace
                if time.monotonic() >= deadline:
                    raise _GaveUp from None


def ordered_prefetch(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int,
                     stop: threading.Event | None = None, grace: float = STOP_GRACE_SECONDS) -> Iterator[R]:
    """Like pool.map, but at most `window` items are in flight, so memory stays bounded.

    Once `stop` is set nothing more is submitted, and a result that does not come within `grace`
    seconds ends the iteration: a worker stuck on a file never holds up a stop request. Work still
    pending is left to close_decode_pool, which knows whether the workers are being stopped.
    """
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            if stop is not None and stop.is_set():
                break
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield _result(pending.popleft(), stop, grace)
        while pending:
            yield _result(pending.popleft(), stop, grace)
    except _GaveUp:
        log.warning("a decode worker did not finish within %.0f s of the stop request: leaving it", grace)


def close_decode_pool(pool: Executor, stop_workers: bool) -> None:
    """Shut the decode pool down; with `stop_workers` (a stop request or an error), worker processes
    are terminated first, so one stuck on a file cannot hold the indexer up."""
    if stop_workers and isinstance(pool, ProcessPoolExecutor):
        # The executor has no public way to stop a busy worker (Python 3.14 adds terminate_workers).
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.terminate()
        # Nothing is cancelled here: the pool fails every pending future once it sees its workers gone,
        # and before Python 3.12 it raised InvalidStateError (printed, not caught) on a cancelled one.
        pool.shutdown(wait=True, cancel_futures=False)
        return
    pool.shutdown(wait=not stop_workers, cancel_futures=True)
