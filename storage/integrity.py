"""Is the catalog database itself sound? The database's own checks, and the relations between its tables."""

from __future__ import annotations

from sqlalchemy import func, select, text

from storage.catalog import Catalog
from storage.errors import CatalogDamagedError
from storage.schema import FileRow, ImageRow, PredictionRow, RejectedFileRow

SHOWN = 20  # lines of a database's own report kept


def database_problems(catalog: Catalog) -> list[str]:
    """What the database's integrity checks report (empty when sound).

    SQLite checks every page, b-tree and index (`PRAGMA integrity_check`) and the foreign keys.
    PostgreSQL has no such command without extensions: every table is read in full, which makes
    a damaged page fail (with data checksums on, bad bytes are caught too), and the amcheck
    extension, where it is installed, checks the catalog's indexes.
    """
    try:
        if catalog.engine.dialect.name == "sqlite":
            return _sqlite_problems(catalog)
        return _postgres_problems(catalog)
    except CatalogDamagedError as exc:
        return [str(exc)]


def _sqlite_problems(catalog: Catalog) -> list[str]:
    with catalog.engine.connect() as conn:
        found = [row[0] for row in conn.exec_driver_sql(f"PRAGMA integrity_check({SHOWN})")]
        problems = [] if found == ["ok"] else [line for item in found for line in str(item).splitlines()]
        orphans = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if orphans:
        problems.append(f"{len(orphans)} rows point at rows that do not exist (foreign key check): "
                        f"{[tuple(r) for r in orphans[:5]]}")
    return problems


def _postgres_problems(catalog: Catalog) -> list[str]:
    problems: list[str] = []
    with catalog.session() as s:
        s.execute(select(func.count(), func.sum(func.length(ImageRow.embedding)), func.max(ImageRow.content_hash)))
        for table in (FileRow, PredictionRow, RejectedFileRow):
            s.execute(select(func.count()).select_from(table))
        if s.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'")):
            for (name,) in s.execute(text(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_am a ON a.oid = c.relam "
                    "WHERE t.relname IN ('images', 'files', 'predictions', 'rejected_files') AND a.amname = 'btree'")):
                s.execute(text("SELECT bt_index_check(CAST(:name AS regclass))"), {"name": name})
    return problems


def orphan_images(catalog: Catalog) -> list[int]:
    """Images no file holds (the indexer removes them in the transaction that removes their last file)."""
    with catalog.session() as s:
        held = select(FileRow.image_id)
        return list(s.scalars(select(ImageRow.id).where(ImageRow.id.not_in(held)).order_by(ImageRow.id)))
