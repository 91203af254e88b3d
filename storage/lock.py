"""One writer at a time per data directory: an exclusive, non-blocking file lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockedError(RuntimeError):
    """Another process is writing to the same data directory."""


@contextmanager
def writer_lock(data_dir: Path) -> Iterator[None]:
    """Hold `<data_dir>/writer.lock` for the duration; the OS releases it if the process dies."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "writer.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(
                f"another lookalike indexer (pid {holder}) is writing to {data_dir}; "
                "wait for it to finish, or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
