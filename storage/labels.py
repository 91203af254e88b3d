"""Custom labels in the catalog: labels and examples, scores written with compare-and-set, filter queries.

Writers never hold a transaction open while they learn or score: they read a label's version,
work, then write only if the version is still the one they read (otherwise someone changed the
label meanwhile, and their own write wins). Scores of a label are replaced in one transaction,
so a filter sees either the old scores or the new ones, never a mix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.catalog import MAX_IMAGE_ID, Catalog, changed_rows
from storage.label_schema import CustomLabelRow, LabelExampleRow, LabelScoreRow
from storage.schema import ImageRow

log = logging.getLogger(__name__)

# A claimed rescoring that has not finished after this long was abandoned (its process died).
CLAIM_SECONDS = 120
INSERT_CHUNK = 5_000


class DuplicateLabelError(ValueError):
    """Another label already has this name (names are unique ignoring case)."""


@dataclass(frozen=True)
class StoredLabel:
    id: int
    name: str
    model_id: str
    weights: np.ndarray | None  # float32 [D]; None when the label has no positive example
    bias: float
    threshold: float
    threshold_auto: bool
    learning: dict[str, object]  # default_threshold, quality (or None)
    revision: int
    version: int
    scored_version: int
    scored_floor: float
    scored_max_id: int
    created_at: datetime
    updated_at: datetime
    positives: tuple[str, ...] = field(default=())  # content hashes, oldest first
    negatives: tuple[str, ...] = field(default=())

    @property
    def scoring(self) -> bool:
        """New scores are on their way (the stored ones are those of an earlier version)."""
        return self.scored_version != self.version


@dataclass(frozen=True)
class Learned:
    """What learning produced, to be saved with the examples it was learned from."""

    model_id: str
    weights: np.ndarray | None
    bias: float
    threshold: float  # the default threshold learning suggests
    quality: dict[str, object] | None

    def report(self) -> str:
        return json.dumps({"default_threshold": round(self.threshold, 6), "quality": self.quality})


def name_key(name: str) -> str:
    return name.casefold()


def _stored(row: CustomLabelRow, examples: Sequence[LabelExampleRow] = ()) -> StoredLabel:
    weights = None if row.weights is None else np.frombuffer(row.weights, dtype="<f4").copy()
    return StoredLabel(
        id=row.id, name=row.name, model_id=row.model_id, weights=weights, bias=float(row.bias),
        threshold=float(row.threshold), threshold_auto=bool(row.threshold_auto),
        learning=json.loads(row.learning) if row.learning else {}, revision=row.revision, version=row.version,
        scored_version=row.scored_version, scored_floor=float(row.scored_floor), scored_max_id=row.scored_max_id,
        created_at=row.created_at, updated_at=row.updated_at,
        positives=tuple(e.content_hash for e in examples if e.positive),
        negatives=tuple(e.content_hash for e in examples if not e.positive),
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- reading labels --------------------------------------------------------------------------


def get_label(catalog: Catalog, name: str) -> StoredLabel | None:
    with catalog.session() as s:
        row = s.scalar(select(CustomLabelRow).where(CustomLabelRow.name_key == name_key(name)))
        if row is None:
            return None
        return _stored(row, _examples(s, row.id))


def get_label_by_id(catalog: Catalog, label_id: int) -> StoredLabel | None:
    with catalog.session() as s:
        row = s.get(CustomLabelRow, label_id)
        return None if row is None else _stored(row, _examples(s, row.id))


def all_labels(catalog: Catalog) -> list[StoredLabel]:
    """Every label with its examples, by name."""
    with catalog.session() as s:
        rows = s.scalars(select(CustomLabelRow).order_by(CustomLabelRow.name_key)).all()
        examples: dict[int, list[LabelExampleRow]] = {}
        for e in s.scalars(select(LabelExampleRow).order_by(LabelExampleRow.added_at, LabelExampleRow.content_hash)):
            examples.setdefault(e.label_id, []).append(e)
        return [_stored(row, examples.get(row.id, [])) for row in rows]


def _examples(s: Session, label_id: int) -> list[LabelExampleRow]:
    return list(s.scalars(select(LabelExampleRow).where(LabelExampleRow.label_id == label_id)
                          .order_by(LabelExampleRow.added_at, LabelExampleRow.content_hash)))


def label_names(catalog: Catalog) -> list[tuple[int, str, str]]:
    """(id, name, model id) of every label: what filters and autocompletion need, without weights."""
    with catalog.session() as s:
        rows = s.execute(select(CustomLabelRow.id, CustomLabelRow.name, CustomLabelRow.model_id)
                         .order_by(CustomLabelRow.name_key)).all()
    return [(int(i), str(n), str(m)) for i, n, m in rows]


# --- examples and vectors ----------------------------------------------------------------------


def ids_for_hashes(catalog: Catalog, hashes: Iterable[str], model_id: str) -> dict[str, int]:
    """content hash -> image id, for the hashes embedded with `model_id`."""
    wanted = sorted(set(hashes))
    found: dict[str, int] = {}
    with catalog.session() as s:
        for start in range(0, len(wanted), 500):
            # By hash alone (its unique index), the model checked here: given both, a database without
            # statistics may scan the model's index, which every row matches.
            rows = s.execute(select(ImageRow.content_hash, ImageRow.id, ImageRow.model_id)
                             .where(ImageRow.content_hash.in_(wanted[start:start + 500])))
            found.update({h: int(i) for h, i, m in rows if m == model_id})
    return found


def hashes_for_ids(catalog: Catalog, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """image id -> (content hash, model id) of the ids that exist."""
    wanted = sorted({i for i in ids if 0 < i <= MAX_IMAGE_ID})
    found: dict[int, tuple[str, str]] = {}
    with catalog.session() as s:
        for start in range(0, len(wanted), 500):
            rows = s.execute(select(ImageRow.id, ImageRow.content_hash, ImageRow.model_id)
                             .where(ImageRow.id.in_(wanted[start:start + 500])))
            found.update({int(i): (str(h), str(m)) for i, h, m in rows})
    return found


def missing_examples(catalog: Catalog, model_id: str) -> dict[int, set[str]]:
    """label id -> example hashes no image holds any more, for labels of `model_id` (images deleted)."""
    with catalog.session() as s:
        rows = s.execute(
            select(LabelExampleRow.label_id, LabelExampleRow.content_hash)
            .join(CustomLabelRow, CustomLabelRow.id == LabelExampleRow.label_id)
            .outerjoin(ImageRow, ImageRow.content_hash == LabelExampleRow.content_hash)
            .where(CustomLabelRow.model_id == model_id, ImageRow.id.is_(None))
        ).all()
    out: dict[int, set[str]] = {}
    for label_id, content_hash in rows:
        out.setdefault(int(label_id), set()).add(str(content_hash))
    return out


# --- writing ------------------------------------------------------------------------------------


def create_label(catalog: Catalog, name: str, learned: Learned, positives: Sequence[str], negatives: Sequence[str],
                 threshold: float | None) -> StoredLabel:
    """Insert a label with its examples; raises DuplicateLabelError when the name is taken."""
    now = _now()
    row = CustomLabelRow(name=name, name_key=name_key(name), model_id=learned.model_id,
                         weights=_blob(learned.weights), bias=learned.bias,
                         threshold=learned.threshold if threshold is None else threshold,
                         threshold_auto=threshold is None, learning=learned.report(), revision=0, version=1,
                         scored_version=0, scored_floor=1.0, scored_max_id=0, created_at=now, updated_at=now)
    try:
        with catalog.session() as s, s.begin():
            s.add(row)
            s.flush()
            s.add_all([LabelExampleRow(label_id=row.id, content_hash=h, positive=True, added_at=now)
                       for h in positives])
            s.add_all([LabelExampleRow(label_id=row.id, content_hash=h, positive=False, added_at=now)
                       for h in negatives])
    except IntegrityError:
        raise DuplicateLabelError(f"a label named {name!r} exists already") from None
    found = get_label_by_id(catalog, row.id)
    assert found is not None
    return found


def save_label(catalog: Catalog, label: StoredLabel, learned: Learned | None, positives: Sequence[str],
               negatives: Sequence[str], threshold: float | None | bool) -> bool:
    """Replace the examples and (when `learned` is given) the weights, if the label is still at `label.revision`.

    `threshold`: a number sets it; None returns it to the learned default; False leaves it as it is.
    The version grows (new scores are needed) unless only a threshold within the stored scores changed.
    Returns False when the label changed (or went) meanwhile: nothing was written.
    """
    now = _now()
    values: dict[str, object] = {"updated_at": now, "revision": label.revision + 1}
    if learned is not None:
        values.update(model_id=learned.model_id, weights=_blob(learned.weights), bias=learned.bias,
                      learning=learned.report())
    new_threshold: float | None = None  # None: it stays as it is
    if threshold is None:
        values["threshold_auto"] = True
        new_threshold = learned.threshold if learned is not None else _learned_default(label)
    elif threshold is not False:
        values["threshold_auto"] = False
        new_threshold = float(threshold)
    elif learned is not None and label.threshold_auto:
        new_threshold = learned.threshold
    if new_threshold is not None:
        values["threshold"] = new_threshold
    rescore = learned is not None or floor_for(
        label.threshold if new_threshold is None else new_threshold) < label.scored_floor
    values["version"] = label.version + 1 if rescore else label.version
    with catalog.session() as s, s.begin():
        changed = changed_rows(s, update(CustomLabelRow).where(
            CustomLabelRow.id == label.id, CustomLabelRow.revision == label.revision).values(**values))
        if changed != 1:
            return False
        _replace_examples(s, label, positives, negatives, now)
        if learned is not None and learned.weights is None:
            # No positive left: the label is empty at once (there is nothing to score).
            s.execute(delete(LabelScoreRow).where(LabelScoreRow.label_id == label.id))
            s.execute(update(CustomLabelRow).where(CustomLabelRow.id == label.id)
                      .values(scored_version=values["version"], scored_floor=1.0, scoring_since=None))
    return True


def _learned_default(label: StoredLabel) -> float:
    """The threshold learning suggested for `label` (its current one when none was stored)."""
    default = label.learning.get("default_threshold", label.threshold)
    return float(default) if isinstance(default, (int, float)) else label.threshold


def _replace_examples(s: Session, label: StoredLabel, positives: Sequence[str], negatives: Sequence[str],
                      now: datetime) -> None:
    """Write the difference between the label's examples and the new ones (a flipped example counts as new)."""
    old = {h: True for h in label.positives} | {h: False for h in label.negatives}
    new = {h: True for h in positives} | {h: False for h in negatives}
    stale = [h for h in old if new.get(h) != old[h]]
    for start in range(0, len(stale), 500):
        s.execute(delete(LabelExampleRow).where(LabelExampleRow.label_id == label.id,
                                                LabelExampleRow.content_hash.in_(stale[start:start + 500])))
    s.add_all([LabelExampleRow(label_id=label.id, content_hash=h, positive=positive, added_at=now)
               for h, positive in new.items() if old.get(h) != positive])


def delete_label(catalog: Catalog, name: str) -> bool:
    with catalog.session() as s, s.begin():
        label_id = s.scalar(select(CustomLabelRow.id).where(CustomLabelRow.name_key == name_key(name)))
        if label_id is None:
            return False
        s.execute(delete(LabelScoreRow).where(LabelScoreRow.label_id == label_id))
        s.execute(delete(LabelExampleRow).where(LabelExampleRow.label_id == label_id))
        s.execute(delete(CustomLabelRow).where(CustomLabelRow.id == label_id))
    return True


def claim_rescoring(catalog: Catalog, label: StoredLabel) -> bool:
    """Mark a label's rescoring as taken by the caller, unless another process took it recently."""
    now = _now()
    with catalog.session() as s, s.begin():
        changed = changed_rows(s, update(CustomLabelRow).where(
            CustomLabelRow.id == label.id, CustomLabelRow.version == label.version,
            or_(CustomLabelRow.scoring_since.is_(None),
                CustomLabelRow.scoring_since < now - timedelta(seconds=CLAIM_SECONDS)),
        ).values(scoring_since=now))
        return changed == 1


def release_claim(catalog: Catalog, label_id: int) -> None:
    with catalog.session() as s, s.begin():
        s.execute(update(CustomLabelRow).where(CustomLabelRow.id == label_id).values(scoring_since=None))


def replace_scores(catalog: Catalog, label: StoredLabel, floor: float, max_id: int, ids: np.ndarray,
                   scores: np.ndarray) -> bool:
    """All of a label's scores at once (images up to `max_id`); False when the label changed meanwhile."""
    with catalog.session() as s, s.begin():
        changed = changed_rows(s, update(CustomLabelRow).where(
            CustomLabelRow.id == label.id, CustomLabelRow.version == label.version,
        ).values(scored_version=label.version, scored_floor=floor, scored_max_id=max_id, scoring_since=None))
        if changed != 1:
            return False
        s.execute(delete(LabelScoreRow).where(LabelScoreRow.label_id == label.id))
        _insert_scores(s, label.id, ids, scores)
    return True


def append_scores(catalog: Catalog, label: StoredLabel, max_id: int, ids: np.ndarray, scores: np.ndarray) -> bool:
    """Scores of images newer than the label's scored_max_id; False when the label changed meanwhile."""
    with catalog.session() as s, s.begin():
        changed = changed_rows(s, update(CustomLabelRow).where(
            CustomLabelRow.id == label.id, CustomLabelRow.version == label.version,
            CustomLabelRow.scored_version == label.version, CustomLabelRow.scored_max_id == label.scored_max_id,
        ).values(scored_max_id=max_id))
        if changed != 1:
            return False
        _insert_scores(s, label.id, ids, scores)
    return True


def _insert_scores(s: Session, label_id: int, ids: np.ndarray, scores: np.ndarray) -> None:
    """Insert the scores of the images that still exist (ids read from an index, or read before a
    deletion, may not), in id order, through the driver's executemany (no ORM: 100,000 rows)."""
    if len(ids) == 0:
        return
    order = np.argsort(ids, kind="stable")
    ids, scores = ids[order], scores[order]
    keep = np.isin(ids, _existing_ids(s, ids))
    ids, scores = ids[keep], scores[keep]
    conn = s.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {LabelScoreRow.__tablename__} (label_id, image_id, score) VALUES ({mark}, {mark}, {mark})"
    for start in range(0, len(ids), INSERT_CHUNK):
        rows = [(label_id, int(i), float(v)) for i, v in zip(ids[start:start + INSERT_CHUNK].tolist(),
                                                              scores[start:start + INSERT_CHUNK].tolist(), strict=True)]
        conn.exec_driver_sql(sql, rows)


def _existing_ids(s: Session, ids: np.ndarray) -> np.ndarray:
    """Which of the sorted `ids` are images: a few by IN lists, many by one scan of their id range."""
    if len(ids) <= 2_000:
        found: list[int] = []
        for start in range(0, len(ids), 500):
            found.extend(s.scalars(select(ImageRow.id).where(ImageRow.id.in_(ids[start:start + 500].tolist()))))
        return np.asarray(found, dtype=np.int64)
    in_range = select(ImageRow.id).where(ImageRow.id >= int(ids[0]), ImageRow.id <= int(ids[-1]))
    return np.fromiter(s.scalars(in_range), dtype=np.int64)


def floor_for(threshold: float) -> float:
    """Lowest score stored for a threshold: the bottom of the borderline band below it."""
    return borderline_band(threshold)[0]


BORDER_LOGIT = 1.0  # borderline: within this many units of log-odds of the threshold


def borderline_band(threshold: float) -> tuple[float, float]:
    """Scores near enough to the threshold that the user's word is worth asking for."""
    t = min(max(threshold, 1e-6), 1 - 1e-6)
    logit = float(np.log(t / (1 - t)))
    low, high = (1 / (1 + np.exp(-(logit + d))) for d in (-BORDER_LOGIT, BORDER_LOGIT))
    return float(low), float(high)


def _blob(weights: np.ndarray | None) -> bytes | None:
    return None if weights is None else np.ascontiguousarray(weights, dtype="<f4").tobytes()
