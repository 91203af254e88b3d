"""Migration 0004: paths written before it (backslashes stored as themselves) read back unchanged after it,
on SQLite and PostgreSQL, and the downgrade restores the old text."""

from __future__ import annotations

import sqlalchemy as sa

from storage.catalog import Catalog
from storage.schema_migrations import downgrade, upgrade

# Old-form rows whose doubling would collide with each other if done in place in the wrong order.
ROOT = "/lib"
OLD_PATHS = ["/lib/a\\b.jpg", "/lib/a\\\\b.jpg", "/lib/a\\\\\\\\b.jpg", "/lib/plain.jpg", "/lib/x\\xff.jpg"]
REJECTED_ROOT = "/li\\b"  # a root with a backslash


def _raw(engine: sa.Engine, table: str) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"SELECT path, root FROM {table}")).tuples())


def test_backslash_paths_survive_the_lossless_paths_migration(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        upgrade(engine, "0003")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO images (id, content_hash, width, height, format, model_id, embedding, "
                                 "indexed_at) VALUES (1, :h, 1, 1, 'JPEG', 'm', :e, CURRENT_TIMESTAMP)"),
                         {"h": "0" * 64, "e": b"\0" * 4})
            for i, path in enumerate(OLD_PATHS):
                conn.execute(sa.text("INSERT INTO files (path, root, size, mtime_ns, image_id) "
                                     "VALUES (:p, :r, :s, 1, 1)"), {"p": path, "r": ROOT, "s": i})
                conn.execute(sa.text("INSERT INTO rejected_files (path, root, size, mtime_ns, kind, reason, "
                                     "rejected_at) VALUES (:p, :r, 0, 0, 'corrupt', 'x', CURRENT_TIMESTAMP)"),
                             {"p": REJECTED_ROOT + path[len(ROOT):] + ".bad", "r": REJECTED_ROOT})
        before = (_raw(engine, "files"), _raw(engine, "rejected_files"))
        upgrade(engine, "0004")
        stored = {path for path, _ in _raw(engine, "files")}
        assert "/lib/a\\\\\\\\b.jpg" in stored and "/lib/plain.jpg" in stored

        catalog = Catalog(database_url)  # the current schema reads them back exactly
        try:
            files = catalog.files_under(ROOT)
            assert set(files) == set(OLD_PATHS)
            assert {files[p].size for p in OLD_PATHS} == set(range(len(OLD_PATHS)))
            rejected = {REJECTED_ROOT + p[len(ROOT):] + ".bad" for p in OLD_PATHS}
            assert {r.path for r in catalog.rejections(REJECTED_ROOT)} == rejected
            assert catalog.roots() == [ROOT]
            assert catalog.image_id_for_path("/lib/a\\\\b.jpg") == 1
        finally:
            catalog.close()

        downgrade(engine, "0003")
        assert (_raw(engine, "files"), _raw(engine, "rejected_files")) == before
    finally:
        engine.dispose()
