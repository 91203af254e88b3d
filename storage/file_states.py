"""What the catalog knows of some files, by path: what a watcher compares a handful of changed files with.

A full scan compares a whole root with `Catalog.files_under`; a watcher's batch names a few paths
(or a few folders), and loading every file of a million-photo root for them would cost seconds.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from storage.catalog import Catalog, FileState
from storage.rejections import UNREADABLE_FOLDER, RejectedState
from storage.schema import FileRow, RejectedFileRow

CHUNK = 500  # paths per IN (...) query


def _chunks(paths: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(paths))
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def file_states(catalog: Catalog, paths: Iterable[str]) -> dict[str, FileState]:
    """path -> what the catalog knows of it, for those of `paths` it holds."""
    out: dict[str, FileState] = {}
    with catalog.session() as s:
        for chunk in _chunks(paths):
            rows = s.execute(select(FileRow.path, FileRow.size, FileRow.mtime_ns, FileRow.image_id)
                             .where(FileRow.path.in_(chunk)))
            out.update({r.path: FileState(r.path, r.size, r.mtime_ns, r.image_id) for r in rows})
    return out


def rejected_states(catalog: Catalog, paths: Iterable[str]) -> dict[str, RejectedState]:
    """path -> state of those of `paths` rejected before (folders that could not be listed left out)."""
    out: dict[str, RejectedState] = {}
    with catalog.session() as s:
        for chunk in _chunks(paths):
            rows = s.execute(select(RejectedFileRow.path, RejectedFileRow.size, RejectedFileRow.mtime_ns,
                                    RejectedFileRow.kind)
                             .where(RejectedFileRow.path.in_(chunk) & (RejectedFileRow.kind != UNREADABLE_FOLDER)))
            out.update({r.path: RejectedState(r.size, r.mtime_ns, r.kind) for r in rows})
    return out


def holds_files_under(catalog: Catalog, root: str) -> bool:
    """Whether the catalog holds any file of library root `root` (one row read, not all of them)."""
    with catalog.session() as s:
        return s.execute(select(FileRow.id).where(FileRow.root == root).limit(1)).first() is not None
