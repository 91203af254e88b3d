"""Catalog tables of custom labels: the label and its learned weights, its examples, and every image's score.

Examples are kept by content hash, not image id: after a model change the catalog is indexed
again under new ids, and the same examples relearn the label from their new vectors. Scores are
derived data (from the weights and the stored vectors) and go with their image when it goes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.schema import Base, _now


class CustomLabelRow(Base):
    """A label: its name, the model whose vectors it was learned on, its weights and threshold.

    `revision` grows with every change (writers compare and set it); `version` grows with every change
    that needs new scores; `scored_version` is the version whose
    scores the scores table holds (they differ while a rescoring is pending), `scored_floor` the
    lowest score stored and `scored_max_id` the highest image id scored so far (newer images are
    the tail still to score).
    """

    __tablename__ = "custom_labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    name_key: Mapped[str] = mapped_column(String(64), unique=True)  # casefolded: names are unique ignoring case
    model_id: Mapped[str] = mapped_column(Text)
    weights: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # float32 [D]; None: no positive
    bias: Mapped[float] = mapped_column(Float, default=0.0)
    threshold: Mapped[float] = mapped_column(Float)
    threshold_auto: Mapped[bool] = mapped_column(Boolean, default=True)  # follows the learned default
    # JSON: what learning reported (the default threshold, the cross-validated quality estimate).
    learning: Mapped[str | None] = mapped_column(Text, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    scored_version: Mapped[int] = mapped_column(Integer, default=0)
    scored_floor: Mapped[float] = mapped_column(Float, default=1.0)
    scored_max_id: Mapped[int] = mapped_column(Integer, default=0)
    scoring_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LabelExampleRow(Base):
    """An image the user gave as an example of a label (positive) or as not one (negative)."""

    __tablename__ = "custom_label_examples"

    label_id: Mapped[int] = mapped_column(ForeignKey("custom_labels.id", ondelete="CASCADE"), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    positive: Mapped[bool] = mapped_column(Boolean)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LabelScoreRow(Base):
    """An image's score for a label, stored when it is at or above the label's floor."""

    __tablename__ = "custom_label_scores"
    # Filters, counts and member lists read (label, score); hits look their labels up by image.
    __table_args__ = (Index("ix_custom_label_scores_label_score", "label_id", "score", "image_id"),)

    label_id: Mapped[int] = mapped_column(ForeignKey("custom_labels.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True,
                                          index=True)
    score: Mapped[float] = mapped_column(Float)
