"""Listing images by class without a query image, and image counts for sets of classes.

Ordering and paging happen in SQL, so a page costs the same at offset 0 and deep into a
100k-image catalog; the predictions index on (class_id, probability, rank, image_id) answers
class filters without reading the table.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from storage.catalog import Catalog
from storage.class_rule import ClassRule
from storage.schema import ImageRow, PredictionRow


@dataclass(frozen=True)
class BrowseEntry:
    image_id: int
    class_id: int | None  # the best matching class (the top-1 prediction when listing every image)
    probability: float | None


@dataclass(frozen=True)
class BrowsePage:
    entries: list[BrowseEntry]
    total: int  # images matching, on every page


def browse_images(catalog: Catalog, class_ids: Collection[int] | None, rule: ClassRule, offset: int,
                  limit: int) -> BrowsePage:
    """Images matching one of `class_ids` under `rule`, most confident first (then by id);
    every image, newest first, when `class_ids` is None."""
    if class_ids is None:
        return _newest(catalog, offset, limit)
    match = rule.matches(class_ids)
    best = func.max(PredictionRow.probability).label("best")
    with catalog.session() as s:
        total = int(s.scalar(select(func.count(PredictionRow.image_id.distinct())).where(match)) or 0)
        page = s.execute(
            select(PredictionRow.image_id, best).where(match).group_by(PredictionRow.image_id)
            .order_by(best.desc(), PredictionRow.image_id).offset(offset).limit(limit)
        ).all()
        ids = [row.image_id for row in page]
        matched: dict[int, tuple[int, float]] = {}
        if ids:
            rows = s.execute(
                select(PredictionRow.image_id, PredictionRow.class_id, PredictionRow.probability)
                .where(match & PredictionRow.image_id.in_(ids)).order_by(PredictionRow.rank)
            )
            for image_id, class_id, probability in rows:
                matched.setdefault(image_id, (class_id, probability))  # lowest rank = most probable
    entries = [BrowseEntry(i, *matched[i]) for i in ids if i in matched]
    return BrowsePage(entries, total)


def _newest(catalog: Catalog, offset: int, limit: int) -> BrowsePage:
    top1 = (PredictionRow.image_id == ImageRow.id) & (PredictionRow.rank == 0)
    with catalog.session() as s:
        total = int(s.scalar(select(func.count(ImageRow.id))) or 0)
        rows = s.execute(
            select(ImageRow.id, PredictionRow.class_id, PredictionRow.probability)
            .outerjoin(PredictionRow, top1).order_by(ImageRow.id.desc()).offset(offset).limit(limit)
        ).all()
    return BrowsePage([BrowseEntry(*row) for row in rows], total)


class MatchTable:
    """Every (image, class) pair that matches under a rule, held as numpy arrays: counting the
    images of any set of classes (a concept) then needs no query and takes well under a
    millisecond per set, so one table answers a whole autocomplete list."""

    def __init__(self, images: np.ndarray, classes: np.ndarray) -> None:
        order = np.argsort(images, kind="stable")
        self.images = images[order]
        self.classes = classes[order]
        self.width = 1 + int(self.classes.max(initial=0))

    @classmethod
    def load(cls, catalog: Catalog, rule: ClassRule) -> MatchTable:
        with catalog.session() as s:
            pairs = s.execute(select(PredictionRow.image_id, PredictionRow.class_id)
                              .where(rule.prediction_matches())).all()
        images = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        classes = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
        return cls(images, classes)

    def count(self, class_ids: Collection[int]) -> int:
        """Images matching at least one of `class_ids`."""
        members = np.zeros(self.width, dtype=bool)
        members[[c for c in class_ids if 0 <= c < self.width]] = True
        found = self.images[members[self.classes]]  # sorted, an image once per matching class
        return 0 if found.size == 0 else 1 + int(np.count_nonzero(found[1:] != found[:-1]))
