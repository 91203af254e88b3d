"""Custom labels in queries: which images have a label, a label's members, browsing, counts.

An image has a label when its stored score is at or above the label's threshold; every query here
reads the scores table through its (label, score) index.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, and_, func, select, union_all

from storage.catalog import MAX_IMAGE_ID, Catalog
from storage.class_rule import ClassRule
from storage.label_schema import CustomLabelRow, LabelScoreRow
from storage.schema import PredictionRow


def _member(label: type[CustomLabelRow] = CustomLabelRow) -> ColumnElement[bool]:
    """SQL condition: a score row gives its image the label (at or above the threshold)."""
    return and_(LabelScoreRow.label_id == label.id, LabelScoreRow.score >= label.threshold)


def member_counts(catalog: Catalog) -> dict[int, int]:
    """label id -> images at or above its threshold (from the stored scores)."""
    with catalog.session() as s:
        rows = s.execute(select(CustomLabelRow.id, func.count(LabelScoreRow.image_id))
                         .join(LabelScoreRow, _member()).group_by(CustomLabelRow.id)).all()
    return {int(i): int(n) for i, n in rows}


def ids_with_labels(catalog: Catalog, label_ids: Collection[int]) -> np.ndarray:
    """Ids of the images that have at least one of the labels, ascending."""
    if not label_ids:
        return np.empty(0, np.int64)
    with catalog.session() as s:
        ids = s.scalars(select(LabelScoreRow.image_id).join(CustomLabelRow, _member())
                        .where(CustomLabelRow.id.in_(sorted(label_ids))).distinct()).all()
    return np.asarray(sorted(ids), dtype=np.int64)


def labels_of_images(catalog: Catalog, image_ids: Sequence[int], model_id: str) -> dict[int, list[tuple[str, float]]]:
    """image id -> (label name, score) of the labels it has, best score first (labels of `model_id` only)."""
    ids = [i for i in image_ids if 0 < i <= MAX_IMAGE_ID]
    out: dict[int, list[tuple[str, float]]] = {}
    if not ids:
        return out
    with catalog.session() as s:
        for start in range(0, len(ids), 500):
            rows = s.execute(
                select(LabelScoreRow.image_id, CustomLabelRow.name, LabelScoreRow.score)
                .join(CustomLabelRow, _member())
                .where(LabelScoreRow.image_id.in_(ids[start:start + 500]), CustomLabelRow.model_id == model_id)
            ).all()
            for image_id, name, score in rows:
                out.setdefault(int(image_id), []).append((str(name), float(score)))
    for found in out.values():
        found.sort(key=lambda pair: (-pair[1], pair[0].casefold()))
    return out


def scored_members(catalog: Catalog, label_id: int, offset: int, limit: int) -> tuple[list[tuple[int, float]], int]:
    """One page of the images with a stored score (best first, then by id) and how many there are."""
    with catalog.session() as s:
        total = int(s.scalar(select(func.count()).select_from(LabelScoreRow)
                             .where(LabelScoreRow.label_id == label_id)) or 0)
        rows = s.execute(select(LabelScoreRow.image_id, LabelScoreRow.score)
                         .where(LabelScoreRow.label_id == label_id)
                         .order_by(LabelScoreRow.score.desc(), LabelScoreRow.image_id)
                         .offset(offset).limit(limit)).all()
    return [(int(i), float(sc)) for i, sc in rows], total


@dataclass(frozen=True)
class LabelledEntry:
    image_id: int
    class_id: int | None  # the best match is an ImageNet class...
    label_id: int | None  # ...or a custom label
    confidence: float  # its probability, or the label's score


def browse_with_labels(catalog: Catalog, class_ids: Collection[int] | None, rule: ClassRule,
                       label_ids: Collection[int], offset: int, limit: int) -> tuple[list[LabelledEntry], int]:
    """Images of any of the classes (under `rule`) or custom labels, most confident first (then by id),
    and how many there are: class probabilities and label scores are ranked together."""
    parts = [select(LabelScoreRow.image_id.label("image_id"), LabelScoreRow.score.label("confidence"))
             .join(CustomLabelRow, _member()).where(CustomLabelRow.id.in_(sorted(label_ids)))]
    if class_ids:
        parts.append(select(PredictionRow.image_id.label("image_id"), PredictionRow.probability.label("confidence"))
                     .where(rule.matches(class_ids)))
    matches = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    best = func.max(matches.c.confidence).label("best")
    with catalog.session() as s:
        total = int(s.scalar(select(func.count(matches.c.image_id.distinct()))) or 0)
        page = s.execute(select(matches.c.image_id, best).group_by(matches.c.image_id)
                         .order_by(best.desc(), matches.c.image_id).offset(offset).limit(limit)).all()
        ids = [int(r.image_id) for r in page]
        which: dict[int, tuple[float, int | None, int | None]] = {}
        if ids:
            for image_id, label_id, score in s.execute(
                select(LabelScoreRow.image_id, LabelScoreRow.label_id, LabelScoreRow.score)
                .join(CustomLabelRow, _member())
                .where(CustomLabelRow.id.in_(sorted(label_ids)), LabelScoreRow.image_id.in_(ids))
            ):
                _keep_best(which, int(image_id), float(score), None, int(label_id))
            if class_ids:
                for image_id, class_id, probability in s.execute(
                    select(PredictionRow.image_id, PredictionRow.class_id, PredictionRow.probability)
                    .where(rule.matches(class_ids), PredictionRow.image_id.in_(ids))
                ):
                    _keep_best(which, int(image_id), float(probability), int(class_id), None)
    entries = [LabelledEntry(i, which[i][1], which[i][2], which[i][0]) for i in ids if i in which]
    return entries, total


def _keep_best(found: dict[int, tuple[float, int | None, int | None]], image_id: int, confidence: float,
               class_id: int | None, label_id: int | None) -> None:
    if image_id not in found or confidence > found[image_id][0]:
        found[image_id] = (confidence, class_id, label_id)
