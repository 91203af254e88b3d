"""Files the indexer rejected, with the reason: listed by `lookalike errors`, retried only when they change."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.schema import RejectedFileRow


@dataclass(frozen=True)
class Rejection:
    path: str
    root: str
    size: int
    mtime_ns: int
    kind: str  # empty, not_image, unsupported_format, corrupt, too_many_pixels, too_costly, unreadable
    reason: str
    rejected_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "root": self.root, "kind": self.kind, "reason": self.reason,
                "size": self.size, "rejected_at": self.rejected_at.isoformat() if self.rejected_at else None}


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


def states_under(s: Session, root: str) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of the files rejected under `root`."""
    rows = s.execute(select(RejectedFileRow.path, RejectedFileRow.size, RejectedFileRow.mtime_ns)
                     .where(RejectedFileRow.root == root))
    return {r.path: (r.size, r.mtime_ns) for r in rows}


def listed(s: Session, root: str | None = None) -> list[Rejection]:
    query = select(RejectedFileRow).order_by(RejectedFileRow.path)
    if root is not None:
        query = query.where(RejectedFileRow.root == root)
    return [Rejection(r.path, r.root, r.size, r.mtime_ns, r.kind, r.reason, r.rejected_at) for r in s.scalars(query)]
