"""Alembic migrations: they own the catalog schema (`render_as_batch` so SQLite can alter tables)."""
