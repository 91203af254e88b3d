"""images ids never reused (SQLite AUTOINCREMENT); staging tables for a reindex built beside the live vectors

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Without AUTOINCREMENT SQLite hands out max(id) + 1, so deleting the newest image lets its id
        # (and every cached /thumbnail and /file of it) come back as another picture. PostgreSQL
        # sequences never go back. Rebuilding the table needs foreign keys off (storage.schema_migrations).
        with op.batch_alter_table("images", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    op.create_table(
        "staged_vectors",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id"),
    )
    op.create_table(
        "staged_predictions",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.SmallInteger(), nullable=False),
        sa.Column("class_id", sa.SmallInteger(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["staged_vectors.image_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id", "rank"),
    )


def downgrade() -> None:
    op.drop_table("staged_predictions")
    op.drop_table("staged_vectors")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("images", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass
