"""Open a library file without ever leaving the library: check and use are one step.

Anyone who can write into a library folder can replace a file by a symbolic link (to
/etc/passwd, or to a photo outside the library), a FIFO or a device at any moment, including
between a check and the use that follows it. So a library file is never checked by path and
opened again later: it is reached from its indexed root one component at a time, each folder
opened relative to the previous one without following symbolic links, the file itself opened
without following a link, without blocking and without becoming a controlling terminal, and
the open descriptor is checked to be a regular file. Everything after that (hashing, decoding,
serving) reads that descriptor only.

The root itself is trusted: it is the folder the owner asked to index.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_READ_CHUNK = 1 << 20

# Why a library path could not be opened (LibraryFileError.kind).
MISSING = "missing"  # it, or a folder on its way, is not there
NOT_A_FILE = "not_a_file"  # a symbolic link, FIFO, device, socket or folder where a file was
UNREADABLE = "unreadable"  # it exists but cannot be read (permissions, I/O error)
OUTSIDE = "outside_root"  # the path does not name a file below the root


class LibraryFileError(OSError):
    """A library file that cannot be opened safely; `kind` is one of the constants above."""

    def __init__(self, kind: str, path: str, reason: str, err: int = 0) -> None:
        super().__init__(err, reason, path)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class LibraryFile:
    """What was read from an opened library file: its bytes and the descriptor's stat before reading."""

    data: bytes
    stat: os.stat_result


def _components(root: str, path: str) -> list[str]:
    base = root.rstrip(os.sep) + os.sep
    if not path.startswith(base):
        raise LibraryFileError(OUTSIDE, path, f"not below the library folder {root}")
    parts = path[len(base):].split(os.sep)
    if any(part in ("", ".", "..") for part in parts):
        raise LibraryFileError(OUTSIDE, path, "the path holds an empty, '.' or '..' component")
    return parts


def _refusal(exc: OSError, path: str, what: str) -> LibraryFileError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return LibraryFileError(MISSING, path, f"{what} is no longer there", exc.errno)
    if exc.errno == errno.ELOOP:
        return LibraryFileError(NOT_A_FILE, path, f"{what} is a symbolic link now (not followed)", exc.errno)
    if exc.errno == errno.ENXIO:
        return LibraryFileError(NOT_A_FILE, path, f"{what} is a socket or device now", exc.errno)
    return LibraryFileError(UNREADABLE, path, f"cannot read {what}: {exc.strerror or exc}", exc.errno or 0)


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def open_beneath(root: str, path: str) -> int:
    """A read-only descriptor of the regular file `path`, reached from `root` without following any
    symbolic link on the way (its own folders included) and without blocking on a FIFO.

    Raises LibraryFileError (an OSError) saying why it cannot: missing, not_a_file, unreadable or
    outside_root. The caller owns the descriptor.
    """
    parts = _components(root, path)
    try:
        folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refusal(exc, path, "the library folder") from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=folder)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(part, folder):
                    exc = OSError(errno.ELOOP, exc.strerror)
                raise _refusal(exc, path, f"its folder {part!r}") from None
            os.close(folder)
            folder = inner
        name = parts[-1]
        try:
            # A FIFO or device is refused before it is opened (opening one can block or act on it);
            # the descriptor is checked again below, so a swap in between changes nothing.
            before = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if not stat.S_ISREG(before.st_mode):
                raise LibraryFileError(NOT_A_FILE, path, f"the file is {_kind_name(before.st_mode)} now")
            fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
        except LibraryFileError:
            raise
        except OSError as exc:
            raise _refusal(exc, path, "the file") from None
    finally:
        os.close(folder)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise LibraryFileError(NOT_A_FILE, path, f"the file is {_kind_name(opened.st_mode)} now")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_descriptor(fd: int, path: str, limit: int | None = None) -> bytes:
    """Every byte of an open file (at most `limit`: a longer file raises LibraryFileError unreadable)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except OSError as exc:
            raise _refusal(exc, path, "the file") from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if limit is not None and total > limit:
            raise LibraryFileError(UNREADABLE, path, f"the file grew past {limit:,} bytes while it was read")
        chunks.append(chunk)


def read_library_file(root: str, path: str, limit: int | None = None) -> LibraryFile:
    """The bytes of the library file `path` below `root`, opened with `open_beneath`."""
    fd = open_beneath(root, path)
    try:
        before = os.fstat(fd)
        return LibraryFile(read_descriptor(fd, path, limit), before)
    finally:
        os.close(fd)

