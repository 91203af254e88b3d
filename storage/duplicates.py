"""Duplicate groups across the library: exact (same content) and near (cosine >= threshold).

Near-duplicates come from a range search of every vector against the index, a batch at a
time, joined with union-find: the work grows with the collection times the cost of one
search, never with the square of its size.

Every group carries the copy suggested for keeping (storage.keep_choice) and what that choice
rests on: dimensions, format, file size and modification time of each copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
from sqlalchemy import func, select

from storage.catalog import Catalog
from storage.index_factory import IndexConfig
from storage.keep_choice import Copy, suggestions
from storage.paths import display_path
from storage.schema import FileRow, ImageRow

SQL_CHUNK = 500  # ids per IN (...) list


class RangeSearchable(Protocol):
    """An index generation, or a generation with its catalog tail (storage.live_index)."""

    def range_search(self, queries: np.ndarray, min_score: float,
                     config: IndexConfig | None = None) -> list[list[tuple[int, float]]]: ...


def modified_json(mtime_ns: int) -> str:
    """A modification time as ISO 8601 in UTC, to the second."""
    when = datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class FileCopy:
    path: str
    mtime_ns: int
    suggested: str  # "keep" or "remove" (storage.keep_choice)


@dataclass(frozen=True)
class ExactGroup:
    """One image content held by several files; the files differ only in path and modification time."""

    image_id: int
    paths: tuple[str, ...]
    width: int = 0
    height: int = 0
    format: str = ""
    size: int = 0
    files: tuple[FileCopy, ...] = ()

    @property
    def keep(self) -> str | None:
        return next((f.path for f in self.files if f.suggested == "keep"), None)

    def to_json(self) -> dict[str, object]:
        return {"image_id": self.image_id, "paths": [display_path(p) for p in self.paths],
                "keep": None if self.keep is None else display_path(self.keep),
                "width": self.width, "height": self.height, "format": self.format, "size": self.size,
                "files": [{"path": display_path(f.path), "modified": modified_json(f.mtime_ns),
                           "suggested": f.suggested} for f in self.files]}


@dataclass(frozen=True)
class NearMember:
    image_id: int
    paths: tuple[str, ...]
    score: float  # cosine similarity to the group's first member (it may be below the threshold)
    link: float = 1.0  # cosine similarity to its closest other member: at least the threshold
    width: int = 0
    height: int = 0
    format: str = ""
    size: int = 0
    mtime_ns: int = 0  # of its oldest file
    suggested: str = ""  # "keep" or "remove" (storage.keep_choice)

    def to_json(self) -> dict[str, object]:
        return {"id": self.image_id, "paths": [display_path(p) for p in self.paths], "score": round(self.score, 6),
                "link": round(self.link, 6), "width": self.width, "height": self.height, "format": self.format,
                "size": self.size, "modified": modified_json(self.mtime_ns), "suggested": self.suggested}


@dataclass(frozen=True)
class NearGroup:
    """Images linked by chains of similarity >= the threshold; the first member has the lowest id."""

    members: tuple[NearMember, ...]

    @property
    def keep(self) -> int | None:
        return next((m.image_id for m in self.members if m.suggested == "keep"), None)

    def to_json(self) -> dict[str, object]:
        return {"keep": self.keep, "images": [m.to_json() for m in self.members]}


def exact_groups(catalog: Catalog) -> list[ExactGroup]:
    """Contents held by two or more files, by image id, each with the file suggested for keeping."""
    with catalog.session() as s:
        shared = select(FileRow.image_id).group_by(FileRow.image_id).having(func.count(FileRow.id) > 1)
        rows = s.execute(select(FileRow.image_id, FileRow.path, FileRow.size, FileRow.mtime_ns, ImageRow.width,
                                ImageRow.height, ImageRow.format)
                         .join(ImageRow, ImageRow.id == FileRow.image_id)
                         .where(FileRow.image_id.in_(shared))
                         .order_by(FileRow.image_id, FileRow.path)).all()
    by_image: dict[int, list[Any]] = {}
    for row in rows:
        by_image.setdefault(int(row.image_id), []).append(row)
    groups = []
    for image_id, files in by_image.items():
        first = files[0]
        chosen = suggestions([Copy(f.path, f.width, f.height, f.size, f.mtime_ns) for f in files])
        groups.append(ExactGroup(image_id, tuple(f.path for f in files), first.width, first.height, first.format,
                                 first.size, tuple(FileCopy(f.path, f.mtime_ns, c)
                                                   for f, c in zip(files, chosen, strict=True))))
    return groups


def oldest_mtimes(catalog: Catalog, image_ids: Sequence[int]) -> dict[int, int]:
    """Per image, the modification time of its oldest file."""
    out: dict[int, int] = {}
    ids = list(image_ids)
    with catalog.session() as s:
        for start in range(0, len(ids), SQL_CHUNK):
            rows = s.execute(select(FileRow.image_id, func.min(FileRow.mtime_ns))
                             .where(FileRow.image_id.in_(ids[start:start + SQL_CHUNK])).group_by(FileRow.image_id))
            out.update({int(i): int(m) for i, m in rows})
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_groups(catalog: Catalog, index: RangeSearchable, threshold: float, config: IndexConfig | None = None,
                batch: int = 1024) -> list[NearGroup]:
    """Groups of distinct images linked by chains of pairs with cosine similarity >= `threshold`.

    Every member is at least `threshold` similar to another member (its `link`); two members of
    one group may be less similar to each other than that, through the chain between them.
    """
    links = _UnionFind()
    closest: dict[int, float] = {}
    for ids, vectors in catalog.iter_embeddings(batch=batch):
        for query_id, hits in zip(ids.tolist(), index.range_search(vectors, threshold, config), strict=True):
            for hit_id, score in hits:
                if hit_id != query_id:
                    links.union(query_id, hit_id)
                    closest[query_id] = max(closest.get(query_id, -1.0), score)
    components: dict[int, list[int]] = {}
    for image_id in list(links.parent):
        components.setdefault(links.find(image_id), []).append(image_id)
    groups = []
    for root in sorted(components):
        members = sorted(set(components[root]) | {root})
        records = catalog.get_images(members)  # images removed meanwhile are left out
        stored = catalog.embeddings(members)
        mtimes = oldest_mtimes(catalog, members)
        present = [i for i in members if i in stored and i in records]
        if len(present) < 2:
            continue
        first = stored[present[0]]
        chosen = suggestions([Copy(i, records[i].width, records[i].height, records[i].size, mtimes.get(i, 0))
                              for i in present])
        groups.append(NearGroup(tuple(
            NearMember(i, records[i].paths, float(np.dot(first, stored[i])),
                       closest.get(i, float(np.dot(first, stored[i]))), records[i].width, records[i].height,
                       records[i].format, records[i].size, mtimes.get(i, 0), suggested)
            for i, suggested in zip(present, chosen, strict=True)
        )))
    return groups


def files_state(catalog: Catalog) -> tuple[int, int, int, int]:
    """Counts and largest ids of files and images: any file or image added or removed changes it."""
    with catalog.session() as s:
        files = s.execute(select(func.count(FileRow.id), func.max(FileRow.id))).one()
        images = s.execute(select(func.count(ImageRow.id), func.max(ImageRow.id))).one()
    return int(files[0]), int(files[1] or 0), int(images[0]), int(images[1] or 0)
