"""The catalog: the source of truth for indexed images, their files, predictions and embeddings."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
from sqlalchemy import CursorResult, Engine, Executable, create_engine, delete, event, func, inspect, select
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from storage import rejections
from storage.class_rule import ClassRule
from storage.errors import CatalogMissingError, describe, install_error_translation
from storage.faults import fault_point
from storage.rejections import RejectedState, Rejection
from storage.schema import FileRow, ImageRow, PredictionRow, RejectedFileRow
from storage.vector_index import IndexMismatchError

log = logging.getLogger(__name__)

# images.id is a 32-bit INTEGER on every database: larger ids cannot exist (and must not reach a driver).
MAX_IMAGE_ID = 2**31 - 1

# What a database or its driver raises for the values of one row (text it cannot encode, a number
# out of range), as opposed to errors of the database itself (locked, full, gone, a collision).
ROW_VALUE_ERRORS: tuple[type[Exception], ...] = (ValueError, ArithmeticError, DataError)

T = TypeVar("T")


@dataclass(frozen=True)
class FileState:
    """What the catalog knows about a file, to decide whether it changed."""

    path: str
    size: int
    mtime_ns: int
    image_id: int


@dataclass(frozen=True)
class FileRef:
    """A file on disk holding the content with `content_hash`."""

    path: str
    root: str
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class NewImage:
    content_hash: str
    width: int
    height: int
    format: str
    model_id: str
    embedding: np.ndarray  # float32 [D]
    predictions: Sequence[tuple[int, float]]  # (class_id, probability), best first


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str  # the first of `paths`, the one results show
    paths: tuple[str, ...]
    content_hash: str
    width: int
    height: int
    format: str
    size: int
    model_id: str
    predictions: tuple[tuple[int, float], ...]


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(database_url: str, create: bool = True) -> Engine:
    """An engine whose driver errors arrive as storage.errors.CatalogError.

    With `create` false, a SQLite file that does not exist raises CatalogMissingError instead of
    being created (SQLite creates the file on first connect otherwise).
    """
    engine = create_engine(database_url)
    install_error_translation(engine)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            if create:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            elif not Path(database).is_file():
                engine.dispose()
                raise CatalogMissingError(describe(engine.url))
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class ContentLookup:
    """Read-only: is some content already embedded? Cheap to open in each decode worker process."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)

    def known(self, content_hash: str) -> bool:
        with self.engine.connect() as conn:
            return conn.scalar(select(ImageRow.id).where(ImageRow.content_hash == content_hash)) is not None

    def close(self) -> None:
        self.engine.dispose()


class Catalog:
    """Typed access to the catalog database; every write is one transaction.

    `create=False` is for commands that only read: a catalog that does not exist yet raises
    CatalogMissingError instead of being created empty.
    """

    def __init__(self, database_url: str, create: bool = True) -> None:
        self.engine = make_engine(database_url, create)
        try:
            if not create and not inspect(self.engine).has_table("alembic_version"):
                raise CatalogMissingError(describe(self.engine.url))
            from storage.schema_migrations import upgrade  # Alembic: only where the schema may need work

            upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def location(self) -> str:
        """The SQLite file or the database URL (without password), for messages."""
        return describe(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    # --- reading -----------------------------------------------------------------------

    def files_under(self, root: str) -> dict[str, FileState]:
        with self.session() as s:
            rows = s.execute(select(FileRow.path, FileRow.size, FileRow.mtime_ns, FileRow.image_id).where(
                FileRow.root == root
            ))
            return {r.path: FileState(r.path, r.size, r.mtime_ns, r.image_id) for r in rows}

    def rejected_under(self, root: str) -> dict[str, RejectedState]:
        """path -> state of files rejected under `root`: skipped until they change (see RejectedState.skips)."""
        with self.session() as s:
            return rejections.states_under(s, root)

    def library_files(self, image_id: int) -> list[FileRef]:
        """The files holding image `image_id`, by path, with the size and mtime they had when indexed."""
        if not 0 < image_id <= MAX_IMAGE_ID:
            return []
        with self.session() as s:
            rows = s.execute(select(FileRow.path, FileRow.root, FileRow.size, FileRow.mtime_ns, ImageRow.content_hash)
                             .join(ImageRow, ImageRow.id == FileRow.image_id)
                             .where(FileRow.image_id == image_id).order_by(FileRow.path))
            return [FileRef(*row) for row in rows]

    def rejections(self, root: str | None = None) -> list[Rejection]:
        with self.session() as s:
            return rejections.listed(s, root)

    def image_id_for_path(self, path: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(FileRow.image_id).where(FileRow.path == path))

    def roots(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(FileRow.root).distinct().order_by(FileRow.root)))

    def ids_for_hashes(self, hashes: Iterable[str]) -> dict[str, int]:
        with self.session() as s:
            return _ids_by_hash(s, hashes)

    def content_hashes(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(ImageRow.content_hash)))

    def model_ids(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(ImageRow.model_id).distinct()))

    def count_images(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count(ImageRow.id))) or 0)

    def count_files(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count(FileRow.id))) or 0)

    def max_image_id(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.max(ImageRow.id))) or 0)

    def get_images(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        """Records for the ids that exist (missing ids are left out)."""
        ids = [i for i in ids if 0 < i <= MAX_IMAGE_ID]
        if not ids:
            return {}
        with self.session() as s:
            rows = s.scalars(
                select(ImageRow)
                .where(ImageRow.id.in_(list(ids)))
                .options(selectinload(ImageRow.files), selectinload(ImageRow.predictions))
            )
            return {row.id: _record(row) for row in rows if row.files}

    def iter_embeddings(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids int64 [n], vectors float32 [n, D]) in id order, a batch at a time."""
        last = 0
        while True:
            with self.session() as s:
                rows = s.execute(
                    select(ImageRow.id, ImageRow.embedding).where(ImageRow.id > last).order_by(ImageRow.id).limit(batch)
                ).all()
            if not rows:
                return
            ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows])
            last = int(ids[-1])
            yield ids, vectors

    def embeddings_after(self, after: int, model_id: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to `limit` (ids, vectors) of `model_id` with ids above `after`, in id order: the catalog's tail."""
        with self.session() as s:
            rows = s.execute(
                select(ImageRow.id, ImageRow.embedding)
                .where(ImageRow.id > after, ImageRow.model_id == model_id)
                .order_by(ImageRow.id).limit(limit)
            ).all()
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
        return ids, np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows])

    def embedding(self, image_id: int, model_id: str | None = None) -> np.ndarray | None:
        """The stored vector of an image, None for an unknown id.

        With `model_id`, a vector of another model raises IndexMismatchError (the catalog switched
        models under a running server).
        """
        if not 0 < image_id <= MAX_IMAGE_ID:
            return None
        with self.session() as s:
            row = s.execute(select(ImageRow.embedding, ImageRow.model_id).where(ImageRow.id == image_id)).first()
        if row is None:
            return None
        if model_id is not None and row.model_id != model_id:
            raise IndexMismatchError(f"image {image_id} now has a vector of model {row.model_id}, but this program "
                                     f"runs model {model_id}: the catalog was re-indexed with another model; restart "
                                     "it with that model configured")
        return np.frombuffer(row.embedding, dtype="<f4").copy()

    def image_ids(self) -> np.ndarray:
        """Every image id, ascending."""
        with self.session() as s:
            return np.fromiter(s.scalars(select(ImageRow.id).order_by(ImageRow.id)), dtype=np.int64)

    def embeddings(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Embeddings of the ids that exist, in one query per 500 ids."""
        out: dict[int, np.ndarray] = {}
        with self.session() as s:
            for chunk in _chunks(list(ids)):
                rows = s.execute(select(ImageRow.id, ImageRow.embedding).where(ImageRow.id.in_(chunk)))
                out.update({r.id: np.frombuffer(r.embedding, dtype="<f4") for r in rows})
        return out

    def ids_matching_classes(self, class_ids: Iterable[int], rule: ClassRule | float) -> np.ndarray:
        """Image ids matching one of `class_ids` under `rule` (a bare number: top-5 with that minimum probability)."""
        with self.session() as s:
            ids = s.scalars(
                select(PredictionRow.image_id).where(ClassRule.of(rule).matches(class_ids)).distinct()
            ).all()
        return np.asarray(sorted(ids), dtype=np.int64)

    def class_counts(self, rule: ClassRule | float) -> list[tuple[int, int]]:
        """(class_id, number of images matching it), most common first."""
        with self.session() as s:
            count = func.count(PredictionRow.image_id.distinct())
            rows = s.execute(
                select(PredictionRow.class_id, count)
                .where(ClassRule.of(rule).prediction_matches())
                .group_by(PredictionRow.class_id)
                .order_by(count.desc(), PredictionRow.class_id)
            ).all()
        return [(int(c), int(n)) for c, n in rows]

    # --- writing -----------------------------------------------------------------------

    def apply(
        self,
        new_images: Sequence[NewImage] = (),
        files: Sequence[FileRef] = (),
        removed_paths: Sequence[str] = (),
        rejected: Sequence[Rejection] = (),
    ) -> tuple[list[int], list[int]]:
        """In one transaction: insert images, point files at their content, drop removed files, record rejections.

        A rejected file that held an image before (it changed into something that is no image) no longer
        holds it, unless the rejection tells nothing of its content (it could not be read: `keeps_image`).
        Returns (ids of the inserted images, ids of images deleted because no file holds them any more).
        """
        removed_paths = list(removed_paths) + [r.path for r in rejected if not r.keeps_image]
        with self.session() as s, s.begin():
            rejections.forget(s, [f.path for f in files] + removed_paths)
            rejections.record(s, rejected)
            rows = [_image_row(img) for img in new_images]
            s.add_all(rows)
            s.flush()
            ids_by_hash = {row.content_hash: row.id for row in rows}
            wanted = {f.content_hash for f in files} - ids_by_hash.keys()
            ids_by_hash.update(_ids_by_hash(s, wanted))
            touched: set[int] = set()
            existing: dict[str, FileRow] = {}
            for chunk in _chunks([f.path for f in files] + list(removed_paths)):
                existing.update({row.path: row for row in s.scalars(select(FileRow).where(FileRow.path.in_(chunk)))})
            for ref in files:
                image_id = ids_by_hash[ref.content_hash]
                row = existing.get(ref.path)
                if row is None:
                    s.add(FileRow(path=ref.path, root=ref.root, size=ref.size, mtime_ns=ref.mtime_ns,
                                  image_id=image_id))
                    continue
                if row.image_id != image_id:
                    touched.add(row.image_id)
                row.root, row.size, row.mtime_ns, row.image_id = ref.root, ref.size, ref.mtime_ns, image_id
            for path in removed_paths:
                row = existing.get(path)
                if row is not None:
                    touched.add(row.image_id)
                    s.delete(row)
            s.flush()
            orphans = self._delete_orphans(s, touched)
        fault_point("catalog-committed")
        return [row.id for row in rows], orphans

    def record_scan_problems(self, root: str, folders: Sequence[Rejection], files: Sequence[Rejection]) -> None:
        """What a scan of `root` could not check: folders it could not list (replacing those of earlier
        scans) and files it could not stat. Nothing else changes: the images under them are kept."""
        with self.session() as s, s.begin():
            rejections.replace_unreadable_folders(s, root, folders)
            rejections.record(s, files)

    @staticmethod
    def _delete_orphans(s: Session, candidates: set[int]) -> list[int]:
        if not candidates:
            return []
        still_used: set[int] = set()
        for chunk in _chunks(sorted(candidates)):
            still_used.update(s.scalars(select(FileRow.image_id).where(FileRow.image_id.in_(chunk))))
        orphans = sorted(candidates - still_used)
        for chunk in _chunks(orphans):
            s.execute(delete(PredictionRow).where(PredictionRow.image_id.in_(chunk)))
            s.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))
        return orphans

    def clear(self) -> None:
        """Forget every image, file and rejection (benchmarks start from an empty shared database with it)."""
        with self.session() as s, s.begin():
            s.execute(delete(FileRow))
            s.execute(delete(RejectedFileRow))
            s.execute(delete(PredictionRow))
            s.execute(delete(ImageRow))


def _chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Slices small enough for an IN (...) clause on every database."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def changed_rows(s: Session, statement: Executable) -> int:
    """How many rows an UPDATE or DELETE changed (Session.execute is typed as returning any Result)."""
    return cast("CursorResult[Any]", s.execute(statement)).rowcount


def _ids_by_hash(s: Session, hashes: Iterable[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(sorted(set(hashes))):
        rows = s.execute(select(ImageRow.content_hash, ImageRow.id).where(ImageRow.content_hash.in_(chunk)))
        found.update({h: i for h, i in rows})
    return found


def _image_row(img: NewImage) -> ImageRow:
    return ImageRow(
        content_hash=img.content_hash,
        width=img.width,
        height=img.height,
        format=img.format,
        model_id=img.model_id,
        embedding=np.ascontiguousarray(img.embedding, dtype="<f4").tobytes(),
        predictions=[
            PredictionRow(rank=rank, class_id=class_id, probability=float(prob))
            for rank, (class_id, prob) in enumerate(img.predictions)
        ],
    )


def _record(row: ImageRow) -> ImageRecord:
    paths = tuple(f.path for f in row.files)
    return ImageRecord(
        id=row.id,
        path=paths[0],
        paths=paths,
        content_hash=row.content_hash,
        width=row.width,
        height=row.height,
        format=row.format,
        size=row.files[0].size,
        model_id=row.model_id,
        predictions=tuple((p.class_id, p.probability) for p in row.predictions),
    )
