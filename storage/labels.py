"""Custom labels in the catalog: labels and examples, scores written with compare-and-set, filter queries.

Writers never hold a transaction open while they learn or score: they read a label's version,
work, then write only if the version is still the one they read (otherwise someone changed the
label meanwhile, and their own write wins). Scores of a label are replaced in one transaction,
so a filter sees either the old scores or the new ones, never a mix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import and_, delete, func, or_, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.catalog import MAX_IMAGE_ID, Catalog
from storage.class_rule import ClassRule
from storage.label_schema import CustomLabelRow, LabelExampleRow, LabelScoreRow
from storage.schema import ImageRow, PredictionRow

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


def _member(label: type[CustomLabelRow] = CustomLabelRow):  # type: ignore[no-untyped-def]
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


def iter_vectors(catalog: Catalog, after_id: int = 0, up_to_id: int = MAX_IMAGE_ID,
                 batch: int = 5_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, unit vectors [n, D]) of the images with after_id < id <= up_to_id, in id order.

    On PostgreSQL the rows come in the binary protocol: the text form of a 7 kB bytea costs
    twice the time to send and parse.
    """
    engine = catalog.engine
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        yield from _iter_vectors_binary(catalog, after_id, up_to_id, batch)
        return
    last = after_id
    while True:
        with engine.connect() as conn:
            rows = conn.execute(select(ImageRow.id, ImageRow.embedding)
                                .where(ImageRow.id > last, ImageRow.id <= up_to_id)
                                .order_by(ImageRow.id).limit(batch)).all()
        if not rows:
            return
        ids, vectors = _stack(rows)
        last = int(ids[-1])
        yield ids, vectors


def _iter_vectors_binary(catalog: Catalog, after_id: int, up_to_id: int,
                         batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    raw = catalog.engine.raw_connection()
    try:
        last = after_id
        while True:
            with raw.driver_connection.cursor(binary=True) as cur:  # type: ignore[union-attr]
                cur.execute("SELECT id, embedding FROM images WHERE id > %s AND id <= %s ORDER BY id LIMIT %s",
                            (last, up_to_id, batch))
                rows = cur.fetchall()
            raw.driver_connection.rollback()  # type: ignore[union-attr]
            if not rows:
                return
            ids, vectors = _stack(rows)
            last = int(ids[-1])
            yield ids, vectors
    finally:
        raw.close()


def _stack(rows: Sequence[Sequence[object]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=len(rows))  # type: ignore[call-overload]
    vectors = np.empty((len(rows), len(rows[0][1]) // 4), dtype="<f4")  # type: ignore[arg-type]
    for k, row in enumerate(rows):
        vectors[k] = np.frombuffer(row[1], dtype="<f4")  # type: ignore[call-overload]
    return ids, vectors


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
    values: dict[str, object] = {"updated_at": _now(), "revision": label.revision + 1}
    if learned is not None:
        values.update(model_id=learned.model_id, weights=_blob(learned.weights), bias=learned.bias,
                      learning=learned.report())
    if threshold is None:
        values.update(threshold_auto=True, threshold=learned.threshold if learned is not None
                      else float(label.learning.get("default_threshold", label.threshold)))  # type: ignore[arg-type]
    elif threshold is not False:
        values.update(threshold=float(threshold), threshold_auto=False)
    elif learned is not None and label.threshold_auto:
        values["threshold"] = learned.threshold
    new_threshold = float(values.get("threshold", label.threshold))  # type: ignore[arg-type]
    rescore = learned is not None or floor_for(new_threshold) < label.scored_floor
    values["version"] = label.version + 1 if rescore else label.version
    now = values["updated_at"]
    with catalog.session() as s, s.begin():
        changed = s.execute(update(CustomLabelRow).where(CustomLabelRow.id == label.id,
                                                         CustomLabelRow.revision == label.revision).values(**values))
        if changed.rowcount != 1:
            return False
        _replace_examples(s, label, positives, negatives, now)  # type: ignore[arg-type]
        if learned is not None and learned.weights is None:
            # No positive left: the label is empty at once (there is nothing to score).
            s.execute(delete(LabelScoreRow).where(LabelScoreRow.label_id == label.id))
            s.execute(update(CustomLabelRow).where(CustomLabelRow.id == label.id)
                      .values(scored_version=values["version"], scored_floor=1.0, scoring_since=None))
    return True


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
        changed = s.execute(update(CustomLabelRow).where(
            CustomLabelRow.id == label.id, CustomLabelRow.version == label.version,
            or_(CustomLabelRow.scoring_since.is_(None),
                CustomLabelRow.scoring_since < now - timedelta(seconds=CLAIM_SECONDS)),
        ).values(scoring_since=now))
        return changed.rowcount == 1


def release_claim(catalog: Catalog, label_id: int) -> None:
    with catalog.session() as s, s.begin():
        s.execute(update(CustomLabelRow).where(CustomLabelRow.id == label_id).values(scoring_since=None))


def replace_scores(catalog: Catalog, label: StoredLabel, floor: float, max_id: int, ids: np.ndarray,
                   scores: np.ndarray) -> bool:
    """All of a label's scores at once (images up to `max_id`); False when the label changed meanwhile."""
    with catalog.session() as s, s.begin():
        changed = s.execute(update(CustomLabelRow).where(
            CustomLabelRow.id == label.id, CustomLabelRow.version == label.version,
        ).values(scored_version=label.version, scored_floor=floor, scored_max_id=max_id, scoring_since=None))
        if changed.rowcount != 1:
            return False
        s.execute(delete(LabelScoreRow).where(LabelScoreRow.label_id == label.id))
        _insert_scores(s, label.id, ids, scores)
    return True


def append_scores(catalog: Catalog, label: StoredLabel, max_id: int, ids: np.ndarray, scores: np.ndarray) -> bool:
    """Scores of images newer than the label's scored_max_id; False when the label changed meanwhile."""
    with catalog.session() as s, s.begin():
        changed = s.execute(update(CustomLabelRow).where(
            CustomLabelRow.id == label.id, CustomLabelRow.version == label.version,
            CustomLabelRow.scored_version == label.version, CustomLabelRow.scored_max_id == label.scored_max_id,
        ).values(scored_max_id=max_id))
        if changed.rowcount != 1:
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
