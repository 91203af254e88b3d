"""Walk photo library roots and list the image files in them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.images import IMAGE_EXTENSIONS
from storage.paths import printable

log = logging.getLogger(__name__)


class RootError(ValueError):
    """A library root is missing or not a folder."""


@dataclass(frozen=True)
class FoundFile:
    path: str  # absolute
    root: str
    size: int
    mtime_ns: int


def resolve_root(path: str | os.PathLike[str]) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise RootError(f"{printable(str(path))}: no such folder (is the drive mounted?)")
    if not root.is_dir():
        raise RootError(f"{printable(str(path))}: not a folder")
    return root.resolve()


@dataclass
class ScanProblems:
    """What a scan could not check: folders it could not list, entries it could not stat.

    Absence is not deletion: a file under one of these is not known to be gone, so the catalog
    keeps what it knows of it.
    """

    folders: dict[str, str] = field(default_factory=dict)  # path -> why it could not be listed
    files: dict[str, str] = field(default_factory=dict)  # path -> why it could not be stat'ed

    def __bool__(self) -> bool:
        return bool(self.folders or self.files)

    def covers(self, path: str, root: str) -> bool:
        """Whether `path` (below `root`) is, or lies under, something this scan could not check."""
        while True:
            if path in self.files or path in self.folders:
                return True
            parent = os.path.dirname(path)
            if parent == path or len(parent) < len(root):
                return False
            path = parent


def scan(root: Path, problems: ScanProblems | None = None, start: Path | None = None) -> Iterator[FoundFile]:
    """Image files under `root` (by extension), recursively, in a stable order; with `start` (a folder below
    `root`), only those under it, still as files of `root`.

    Symlinks are not followed: a link inside the root points at files that are scanned at
    their real place anyway, and a link leaving the root must not pull other files in.
    Hidden files and folders (names starting with ".") are skipped. Folders that cannot be
    listed and entries that cannot be stat'ed are logged and noted in `problems`.
    """
    problems = problems if problems is not None else ScanProblems()
    stack = [start if start is not None else root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name, reverse=True)
        except OSError as exc:
            log.warning("cannot list folder %s: %s; the images known under it are kept",
                        printable(str(folder)), exc.strerror or exc)
            problems.folders[str(folder)] = f"cannot list folder: {exc.strerror or exc}"
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    st = entry.stat()
                    yield FoundFile(entry.path, str(root), st.st_size, st.st_mtime_ns)
            except OSError as exc:
                log.warning("cannot stat %s: %s; what is known of it is kept", printable(entry.path),
                            exc.strerror or exc)
                problems.files[entry.path] = f"cannot stat: {exc.strerror or exc}"
