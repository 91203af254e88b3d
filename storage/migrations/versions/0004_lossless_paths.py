"""files, rejected_files: paths stored losslessly (backslashes doubled, undecodable bytes as \\xNN)

Paths that are not valid UTF-8 could not be stored before; from this revision the path and
root columns hold `storage.paths.to_db(path)`. Ordinary paths are unchanged; only rows holding
a backslash need rewriting (a backslash becomes two).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("files", "rejected_files")
COLUMNS = ("path", "root")
_UNDECODABLE = tuple(f"\\x{byte:02x}" for byte in range(0x80, 0x100))


def _doubled(text: str) -> str:
    return text.replace("\\", "\\\\")


def _halved(text: str) -> str | None:
    """The old form of a new-form text; None when it holds an undecodable byte (no old form exists)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("\\\\", i):
            out.append("\\")
            i += 2
        elif text.startswith("\\x", i) and text[i:i + 4].lower() in _UNDECODABLE:
            return None
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _rewrite(table_name: str, column_name: str, convert: Callable[[str], str | None], longest_first: bool) -> None:
    """Rewrite every value of one column that holds a backslash, one row at a time.

    Rows are visited so that a new value never meets an old value still waiting for its turn
    (doubling makes a value longer: longest first; halving makes it shorter: shortest first),
    so the UNIQUE constraint on path holds after every single UPDATE, on every database.
    """
    bind = op.get_bind()
    table = sa.table(table_name, sa.column("id", sa.Integer), sa.column(column_name, sa.Text))
    column = table.c[column_name]
    rows = sorted(bind.execute(sa.select(table.c.id, column).where(column.contains("\\", autoescape=True))),
                  key=lambda row: len(row[1]), reverse=longest_first)
    for row_id, value in rows:
        new = convert(value)
        if new is None or new == value:
            continue
        if column_name == "path" and bind.scalar(sa.select(table.c.id).where(column == new)) is not None:
            continue  # downgrade only: a kept escaped text already reads like this value
        bind.execute(sa.update(table).where(table.c.id == row_id).values({column_name: new}))


def upgrade() -> None:
    for table_name in TABLES:
        for column_name in COLUMNS:
            _rewrite(table_name, column_name, _doubled, longest_first=True)


def downgrade() -> None:
    # Paths with undecodable bytes have no form the old schema could hold: they keep their escaped text.
    for table_name in TABLES:
        for column_name in COLUMNS:
            _rewrite(table_name, column_name, _halved, longest_first=False)
