"""One writer at a time per data directory: exclusive file locks the OS releases when a process dies.

Two locks live in the data directory:
- `writer.lock`, held by whoever writes the catalog and the index: an index run for its whole length,
  a watcher for each batch it commits, an upload for its commit. Others wait for it (a bounded time)
  or give up with a message naming the holder.
- `watch.lock`, held by a watcher (`lookalike watch`, `serve --watch`) for as long as it runs: it is
  the one process keeping the data directory in step, so an index run started by hand is refused
  (or waits, with `--wait`) instead of racing it between batches.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WRITER_LOCK = "writer.lock"
WATCH_LOCK = "watch.lock"
POLL_SECONDS = 0.1


class LockedError(RuntimeError):
    """Another process is writing to the same data directory."""


class DataDirError(RuntimeError):
    """The data directory cannot be created or written (permissions, a full or read-only disk)."""


def _open(data_dir: Path, name: str) -> int:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        return os.open(data_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DataDirError(f"cannot use the data directory {data_dir.resolve()}: {exc.strerror or exc}. Check that "
                           "its disk is mounted, writable and has free space, then run again.") from None


def _holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def _acquire(fd: int, wait_seconds: float | None) -> bool:
    """Take the exclusive lock on `fd`, trying until `wait_seconds` have passed (None: forever)."""
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)


def _claim(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError:  # the pid only helps the messages; a full disk must not stop the writer here
        pass


@contextmanager
def writer_lock(data_dir: Path, wait_seconds: float | None = 0.0) -> Iterator[None]:
    """Hold `<data_dir>/writer.lock` for the duration, waiting up to `wait_seconds` (None: as long as it takes).

    Raises LockedError naming the holder when it is still taken after that.
    """
    fd = _open(data_dir, WRITER_LOCK)
    try:
        if not _acquire(fd, wait_seconds):
            raise LockedError(
                f"another lookalike indexer (pid {_holder(fd)}) is writing to {data_dir}; "
                "wait for it to finish, or stop it, then run again"
            )
        _claim(fd)
        yield
    finally:
        os.close(fd)


@contextmanager
def watch_lock(data_dir: Path) -> Iterator[None]:
    """Hold `<data_dir>/watch.lock` while this process watches the library (one watcher per data directory)."""
    fd = _open(data_dir, WATCH_LOCK)
    try:
        if not _acquire(fd, 0.0):
            raise LockedError(f"another lookalike watcher (pid {_holder(fd)}) keeps {data_dir} in step already; "
                              "stop it first, or let it do the work")
        _claim(fd)
        yield
    finally:
        os.close(fd)


def holder(data_dir: Path, name: str) -> str | None:
    """The pid of the process holding the lock file `name` (WRITER_LOCK, WATCH_LOCK), or None when it is free."""
    try:
        fd = os.open(data_dir / name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        return None
    finally:
        os.close(fd)


def watcher_pid(data_dir: Path) -> str | None:
    """The pid of the watcher keeping `data_dir` in step, or None when there is none."""
    return holder(data_dir, WATCH_LOCK)


@contextmanager
def index_run_lock(data_dir: Path, wait: bool = False) -> Iterator[None]:
    """What a whole index run holds: no watcher may be keeping the data directory in step meanwhile, and the
    writer lock for the run. With `wait`, waits for both instead of refusing."""
    fd = _open(data_dir, WATCH_LOCK)
    try:
        # Holding the watch lock too keeps a watcher from starting in the middle of the run.
        if not _acquire(fd, None if wait else 0.0):
            raise LockedError(
                f"another lookalike indexer (pid {_holder(fd)}, a watcher) is writing to {data_dir}; "
                "wait for it to finish, or stop it, then run again (or use --wait)"
            )
        with writer_lock(data_dir, None if wait else 0.0):
            yield
    finally:
        os.close(fd)
