"""predictions: covering index on (class_id, probability, rank, image_id) for class filters and browsing

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index("ix_predictions_class_probability", ["class_id", "probability", "rank", "image_id"],
                              unique=False)
        batch_op.drop_index(batch_op.f("ix_predictions_class_id"))


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_predictions_class_id"), ["class_id"], unique=False)
        batch_op.drop_index("ix_predictions_class_probability")
