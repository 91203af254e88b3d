"""Duplicate groups across the library: exact (same content) and near (cosine >= threshold).

Near-duplicates come from a range search of every vector against the index, a batch at a
time, joined with union-find: the work grows with the collection times the cost of one
search, never with the square of its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from storage.catalog import Catalog
from storage.index_factory import IndexConfig
from storage.paths import display_path
from storage.schema import FileRow
from storage.vector_index import VectorIndex


@dataclass(frozen=True)
class ExactGroup:
    """One image content held by several files."""

    image_id: int
    paths: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"image_id": self.image_id, "paths": [display_path(p) for p in self.paths]}


@dataclass(frozen=True)
class NearMember:
    image_id: int
    paths: tuple[str, ...]
    score: float  # cosine similarity to the group's first member (it may be below the threshold)
    link: float = 1.0  # cosine similarity to its closest other member: at least the threshold


@dataclass(frozen=True)
class NearGroup:
    """Images linked by chains of similarity >= the threshold; the first member has the lowest id."""

    members: tuple[NearMember, ...]

    def to_json(self) -> dict[str, object]:
        return {"images": [{"id": m.image_id, "paths": [display_path(p) for p in m.paths], "score": round(m.score, 6),
                            "link": round(m.link, 6)} for m in self.members]}


def exact_groups(catalog: Catalog) -> list[ExactGroup]:
    """Contents held by two or more files, by image id."""
    with catalog.session() as s:
        shared = select(FileRow.image_id).group_by(FileRow.image_id).having(func.count(FileRow.id) > 1)
        rows = s.execute(select(FileRow.image_id, FileRow.path).where(FileRow.image_id.in_(shared))
                         .order_by(FileRow.image_id, FileRow.path)).all()
    paths: dict[int, list[str]] = {}
    for image_id, path in rows:
        paths.setdefault(int(image_id), []).append(path)
    return [ExactGroup(image_id, tuple(p)) for image_id, p in paths.items()]


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


def near_groups(catalog: Catalog, index: VectorIndex, threshold: float, config: IndexConfig | None = None,
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
        records = catalog.get_images(members)
        by_id = catalog.embeddings(members)
        first = by_id[members[0]]
        groups.append(NearGroup(tuple(
            NearMember(i, records[i].paths if i in records else (), float(np.dot(first, by_id[i])),
                       closest.get(i, float(np.dot(first, by_id[i]))))
            for i in members if i in by_id
        )))
    return groups
