"""Walk photo library roots and list the image files in them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.images import IMAGE_EXTENSIONS

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
        raise RootError(f"{path}: no such folder (is the drive mounted?)")
    if not root.is_dir():
        raise RootError(f"{path}: not a folder")
    return root.resolve()


def scan(root: Path) -> Iterator[FoundFile]:
    """Image files under `root` (by extension), recursively, in a stable order.

    Symlinks are not followed: a link inside the root points at files that are scanned at
    their real place anyway, and a link leaving the root must not pull other files in.
    Hidden files and folders (names starting with ".") are skipped.
    """
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            log.warning("cannot read folder %s: %s", folder, exc)
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
                log.warning("cannot read %s: %s", entry.path, exc)
