"""One writer at a time per data directory: an exclusive, non-blocking file lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockedError(RuntimeError):
    """Another process is writing to the same data directory."""


class DataDirError(RuntimeError):
    """The data directory cannot be created or written (permissions, a full or read-only disk)."""


@contextmanager
def writer_lock(data_dir: Path) -> Iterator[None]:
    """Hold `<data_dir>/writer.lock` for the duration; the OS releases it if the process dies."""
    path = data_dir / "writer.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataDirError(f"cannot use the data directory {data_dir.resolve()}: {exc.strerror or exc}. Check that "
                           "its disk is mounted, writable and has free space, then run again.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(
                f"another lookalike indexer (pid {holder}) is writing to {data_dir}; "
                "wait for it to finish, or stop it, then run again"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:  # the pid only helps the message above; a full disk must not stop the run here
            pass
        yield
    finally:
        os.close(fd)
