"""A reindex builds the new model's vectors beside the live ones, then switches in one transaction.

While it runs, the catalog keeps its current vectors (and the published index keeps serving
them); the new vectors and predictions wait in staged_vectors / staged_predictions. A crash
leaves the current model serving and the staged rows in place, so the next reindex resumes
instead of embedding them again. `swap` then replaces every image's vector, model and
predictions at once; images that could not be read again leave the catalog as rejections
(listed by `lookalike errors`, retried when their file changes), never silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import delete, func, insert, select, update

from storage import rejections
from storage.catalog import Catalog, _chunks, changed_rows
from storage.faults import fault_point
from storage.rejections import Rejection
from storage.schema import FileRow, ImageRow, PredictionRow, StagedPredictionRow, StagedVectorRow

log = logging.getLogger(__name__)

NOT_REINDEXED = "not_reindexed"  # the kind of rejection an image gets when it cannot be read again
# Such a rejection is recorded with this mtime, which no file has: the next scan of its folder tries the
# file again (it may have been changed, or readable again), instead of skipping it until it changes.
RETRY_MTIME = -1


@dataclass(frozen=True)
class StagedVector:
    image_id: int
    embedding: np.ndarray  # float32 [D], L2-normalised
    predictions: Sequence[tuple[int, float]]  # (class_id, probability), best first


@dataclass(frozen=True)
class FileOfImage:
    path: str
    root: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ToReread:
    """A catalog image still to embed with the new model, and the files that should hold its bytes."""

    image_id: int
    content_hash: str
    files: tuple[FileOfImage, ...]


@dataclass(frozen=True)
class SwapResult:
    switched: int  # images whose vector, model and predictions were replaced
    dropped: int  # images that left the catalog (their files became rejections)


def discard_other_models(catalog: Catalog, model_id: str) -> int:
    """Forget staged rows of another model (the configured model changed again mid-reindex)."""
    with catalog.session() as s, s.begin():
        stale = s.scalars(select(StagedVectorRow.image_id).where(StagedVectorRow.model_id != model_id)).all()
        for chunk in _chunks(list(stale)):
            s.execute(delete(StagedPredictionRow).where(StagedPredictionRow.image_id.in_(chunk)))
            s.execute(delete(StagedVectorRow).where(StagedVectorRow.image_id.in_(chunk)))
    if stale:
        log.warning("forgot %d vectors staged for another model than %s", len(stale), model_id)
    return len(stale)


def staged_count(catalog: Catalog, model_id: str | None = None) -> int:
    """Images with a staged vector (of `model_id`, or of any model)."""
    query = select(func.count(StagedVectorRow.image_id))
    if model_id is not None:
        query = query.where(StagedVectorRow.model_id == model_id)
    with catalog.session() as s:
        return int(s.scalar(query) or 0)


def max_staged_id(catalog: Catalog, model_id: str) -> int:
    with catalog.session() as s:
        return int(s.scalar(select(func.max(StagedVectorRow.image_id)).where(StagedVectorRow.model_id == model_id))
                   or 0)


def staged_models(catalog: Catalog) -> set[str]:
    with catalog.session() as s:
        return set(s.scalars(select(StagedVectorRow.model_id).distinct()))


def unstaged(catalog: Catalog, model_id: str, batch: int = 1_000) -> Iterator[ToReread]:
    """Every image without a staged vector of `model_id`, in id order, with its files."""
    last = 0
    while True:
        with catalog.session() as s:
            staged = select(StagedVectorRow.image_id).where(StagedVectorRow.model_id == model_id)
            rows = s.execute(select(ImageRow.id, ImageRow.content_hash)
                             .where(ImageRow.id > last, ImageRow.id.not_in(staged))
                             .order_by(ImageRow.id).limit(batch)).all()
            if not rows:
                return
            files: dict[int, list[FileOfImage]] = {}
            for f in s.execute(select(FileRow.image_id, FileRow.path, FileRow.root, FileRow.size, FileRow.mtime_ns)
                               .where(FileRow.image_id.in_([r.id for r in rows])).order_by(FileRow.path)):
                files.setdefault(f.image_id, []).append(FileOfImage(f.path, f.root, f.size, f.mtime_ns))
        for r in rows:
            yield ToReread(r.id, r.content_hash, tuple(files.get(r.id, ())))
        last = rows[-1].id


def stage(catalog: Catalog, model_id: str, vectors: Sequence[StagedVector]) -> None:
    """Store new vectors beside the live ones, in one transaction (a retry replaces them)."""
    if not vectors:
        return
    ids = [v.image_id for v in vectors]
    with catalog.session() as s, s.begin():
        for chunk in _chunks(ids):
            s.execute(delete(StagedPredictionRow).where(StagedPredictionRow.image_id.in_(chunk)))
            s.execute(delete(StagedVectorRow).where(StagedVectorRow.image_id.in_(chunk)))
        # An image deleted meanwhile has no row to point at: skip it rather than fail the batch.
        alive: set[int] = set()
        for chunk in _chunks(ids):
            alive.update(s.scalars(select(ImageRow.id).where(ImageRow.id.in_(chunk))))
        s.add_all(
            StagedVectorRow(
                image_id=v.image_id, model_id=model_id,
                embedding=np.ascontiguousarray(v.embedding, dtype="<f4").tobytes(),
                predictions=[StagedPredictionRow(rank=rank, class_id=c, probability=float(p))
                             for rank, (c, p) in enumerate(v.predictions)],
            )
            for v in vectors if v.image_id in alive
        )
    fault_point("reindex-staged")


def iter_staged(catalog: Catalog, model_id: str, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Staged (ids int64 [n], vectors float32 [n, D]) of `model_id` in id order, a batch at a time."""
    last = 0
    while True:
        with catalog.session() as s:
            rows = s.execute(select(StagedVectorRow.image_id, StagedVectorRow.embedding)
                             .where(StagedVectorRow.model_id == model_id, StagedVectorRow.image_id > last)
                             .order_by(StagedVectorRow.image_id).limit(batch)).all()
        if not rows:
            return
        ids = np.fromiter((r.image_id for r in rows), dtype=np.int64, count=len(rows))
        yield ids, np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows])
        last = int(ids[-1])


def swap(catalog: Catalog, model_id: str, reasons: Mapping[int, str] | None = None) -> SwapResult:
    """In one transaction: every staged image takes its new vector, model and predictions; every
    image without one leaves the catalog, each of its files recorded as a rejection with the reason
    from `reasons` (by image id), so `lookalike errors` lists it and a changed file is retried."""
    reasons = reasons or {}
    staged = select(StagedVectorRow.image_id).where(StagedVectorRow.model_id == model_id)
    now = datetime.now(timezone.utc)
    with catalog.session() as s, s.begin():
        dropped = s.scalars(select(ImageRow.id).where(ImageRow.id.not_in(staged))).all()
        for chunk in _chunks(list(dropped)):
            files = s.execute(select(FileRow).where(FileRow.image_id.in_(chunk))).scalars().all()
            rejections.record(s, [
                Rejection(f.path, f.root, f.size, RETRY_MTIME, NOT_REINDEXED,
                          f"not re-embedded with model {model_id}: "
                          f"{reasons.get(f.image_id, 'its file could not be read again')}")
                for f in files
            ])
            s.execute(delete(FileRow).where(FileRow.image_id.in_(chunk)))
            s.execute(delete(PredictionRow).where(PredictionRow.image_id.in_(chunk)))
            s.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))
        new_embedding = (select(StagedVectorRow.embedding).where(StagedVectorRow.image_id == ImageRow.id)
                         .scalar_subquery())
        switched = changed_rows(s, update(ImageRow).where(ImageRow.id.in_(staged))
                                .values(embedding=new_embedding, model_id=model_id, indexed_at=now)
                                .execution_options(synchronize_session=False))
        s.execute(delete(PredictionRow).where(PredictionRow.image_id.in_(staged)))
        s.execute(insert(PredictionRow).from_select(
            ["image_id", "rank", "class_id", "probability"],
            select(StagedPredictionRow.image_id, StagedPredictionRow.rank, StagedPredictionRow.class_id,
                   StagedPredictionRow.probability),
        ))
        s.execute(delete(StagedPredictionRow))
        s.execute(delete(StagedVectorRow))
    fault_point("reindex-swapped")
    log.warning("switched the catalog to model %s: %d images re-embedded, %d could not be read again", model_id,
                switched, len(dropped))
    return SwapResult(int(switched), len(dropped))
