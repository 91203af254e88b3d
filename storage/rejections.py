"""Files the indexer rejected, with the reason: listed by `lookalike errors`, retried only when they change.

Two kinds say nothing about a file's content and keep whatever the catalog knew of it:
`unreadable` (the file exists but cannot be read or stat'ed now: permissions, an I/O error)
is retried on every run, and `unreadable_folder` (a folder that could not be listed: the
images under it are kept) is replaced by each run's scan of its root.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.paths import display_path
from storage.schema import RejectedFileRow


@dataclass(frozen=True)
class Rejection:
    path: str
    root: str
    size: int
    mtime_ns: int
    # empty, not_image, unsupported_format, corrupt, too_many_pixels, too_costly, not_a_file, unstorable,
    # unreadable, unreadable_folder
    kind: str
    reason: str
    rejected_at: datetime | None = None

    @property
    def keeps_image(self) -> bool:
        """Whether the file keeps the image it had: true when the error tells nothing of its content."""
        return self.kind in KEEP_IMAGE_KINDS

    def to_json(self) -> dict[str, object]:
        return {"path": display_path(self.path), "root": display_path(self.root), "kind": self.kind,
                "reason": self.reason, "size": self.size,
                "rejected_at": self.rejected_at.isoformat() if self.rejected_at else None}


UNREADABLE = "unreadable"
UNSTORABLE = "unstorable"  # the catalog database refused the file's row (retried when the file changes)
UNREADABLE_FOLDER = "unreadable_folder"
KEEP_IMAGE_KINDS = frozenset({UNREADABLE, UNREADABLE_FOLDER})


@dataclass(frozen=True)
class RejectedState:
    size: int
    mtime_ns: int
    kind: str

    def skips(self, size: int, mtime_ns: int) -> bool:
        """Whether a file found with this size and mtime is skipped: rejected before for its content, unchanged."""
        return self.kind not in KEEP_IMAGE_KINDS and (self.size, self.mtime_ns) == (size, mtime_ns)


def forget(s: Session, paths: Iterable[str], chunk: int = 500) -> None:
    """Drop the rejection records of `paths` (indexed after all, changed, or gone)."""
    items = sorted(set(paths))
    for start in range(0, len(items), chunk):
        s.execute(delete(RejectedFileRow).where(RejectedFileRow.path.in_(items[start:start + chunk])))


def record(s: Session, rejections: Sequence[Rejection]) -> None:
    """Insert or replace the records of `rejections`, keyed by path."""
    forget(s, [r.path for r in rejections])
    s.add_all(RejectedFileRow(path=r.path, root=r.root, size=r.size, mtime_ns=r.mtime_ns, kind=r.kind,
                              reason=r.reason) for r in rejections)


def states_under(s: Session, root: str) -> dict[str, RejectedState]:
    """path -> state of the files rejected under `root` (folders that could not be listed left out)."""
    rows = s.execute(select(RejectedFileRow.path, RejectedFileRow.size, RejectedFileRow.mtime_ns, RejectedFileRow.kind)
                     .where((RejectedFileRow.root == root) & (RejectedFileRow.kind != UNREADABLE_FOLDER)))
    return {r.path: RejectedState(r.size, r.mtime_ns, r.kind) for r in rows}


def replace_unreadable_folders(s: Session, root: str, folders: Sequence[Rejection]) -> None:
    """The folders under `root` that its latest scan could not list: `folders`, and no others."""
    s.execute(delete(RejectedFileRow).where((RejectedFileRow.root == root)
                                            & (RejectedFileRow.kind == UNREADABLE_FOLDER)))
    record(s, folders)


def listed(s: Session, root: str | None = None) -> list[Rejection]:
    query = select(RejectedFileRow).order_by(RejectedFileRow.path)
    if root is not None:
        query = query.where(RejectedFileRow.root == root)
    return [Rejection(r.path, r.root, r.size, r.mtime_ns, r.kind, r.reason, r.rejected_at) for r in s.scalars(query)]
