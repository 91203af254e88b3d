"""catalog: custom labels, their examples and every image's score

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "custom_labels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=True),
        sa.Column("bias", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("threshold_auto", sa.Boolean(), nullable=False),
        sa.Column("learning", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("scored_version", sa.Integer(), nullable=False),
        sa.Column("scored_floor", sa.Float(), nullable=False),
        sa.Column("scored_max_id", sa.Integer(), nullable=False),
        sa.Column("scoring_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name_key"),
    )
    op.create_table(
        "custom_label_examples",
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["label_id"], ["custom_labels.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("label_id", "content_hash"),
    )
    op.create_table(
        "custom_label_scores",
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["label_id"], ["custom_labels.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("label_id", "image_id"),
    )
    with op.batch_alter_table("custom_label_scores", schema=None) as batch_op:
        batch_op.create_index("ix_custom_label_scores_label_score", ["label_id", "score", "image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_custom_label_scores_image_id"), ["image_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("custom_label_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_custom_label_scores_image_id"))
        batch_op.drop_index("ix_custom_label_scores_label_score")
    op.drop_table("custom_label_scores")
    op.drop_table("custom_label_examples")
    op.drop_table("custom_labels")
