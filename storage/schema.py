"""Catalog tables: one row per distinct image content, the files that hold it, and its predictions.

An image is identified by the SHA-256 of its bytes, so two files with the same content share
one embedding. `images.id` is also the vector id in the FAISS index.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, SmallInteger, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from storage.paths import from_db, to_db


class PathText(TypeDecorator[str]):
    """A Text column holding a file path: any path Python can name is stored and read back exactly."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else to_db(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else from_db(value)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"
    # Ids are never handed out twice (SQLite would reuse the highest one after a delete without it).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str] = mapped_column(Text, index=True)
    # float32 little-endian, L2-normalised: the FAISS index is rebuilt from these.
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    files: Mapped[list[FileRow]] = relationship(back_populates="image", order_by="FileRow.path")
    predictions: Mapped[list[PredictionRow]] = relationship(
        back_populates="image", order_by="PredictionRow.rank", cascade="all, delete-orphan"
    )


class FileRow(Base):
    __tablename__ = "files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Paths are stored losslessly, undecodable bytes included (see storage.paths).
    path: Mapped[str] = mapped_column(PathText, unique=True)
    root: Mapped[str] = mapped_column(PathText, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)

    image: Mapped[ImageRow] = relationship(back_populates="files")


class PredictionRow(Base):
    __tablename__ = "predictions"
    # Class filters, browsing and counts read only these columns: the index alone answers them.
    __table_args__ = (Index("ix_predictions_class_probability", "class_id", "probability", "rank", "image_id"),)

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    class_id: Mapped[int] = mapped_column(SmallInteger)
    probability: Mapped[float] = mapped_column(Float)

    image: Mapped[ImageRow] = relationship(back_populates="predictions")


class RejectedFileRow(Base):
    """A file the indexer could not use, with why; retried only once its size or mtime changes."""

    __tablename__ = "rejected_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Paths are stored losslessly, undecodable bytes included (see storage.paths).
    path: Mapped[str] = mapped_column(PathText, unique=True)
    root: Mapped[str] = mapped_column(PathText, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    rejected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class StagedVectorRow(Base):
    """An image's vector from the model a running reindex switches to, built beside the live one.

    The reindex fills these while the current vectors keep serving, then swaps them in with one
    transaction; a crash leaves the current model serving and the next reindex resumes from here.
    """

    __tablename__ = "staged_vectors"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    staged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    predictions: Mapped[list[StagedPredictionRow]] = relationship(order_by="StagedPredictionRow.rank",
                                                                  cascade="all, delete-orphan")


class StagedPredictionRow(Base):
    __tablename__ = "staged_predictions"

    image_id: Mapped[int] = mapped_column(ForeignKey("staged_vectors.image_id", ondelete="CASCADE"),
                                          primary_key=True)
    rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    class_id: Mapped[int] = mapped_column(SmallInteger)
    probability: Mapped[float] = mapped_column(Float)


# Custom labels' and API keys' tables join the same metadata (Alembic compares the catalog against all of them).
from storage import key_schema as _key_schema  # noqa: E402, F401
from storage import label_schema as _label_schema  # noqa: E402, F401
