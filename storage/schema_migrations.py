"""Bring a catalog database to the current schema with Alembic (never `create_all` on a live database)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Alembic keeps the running environment in module globals: two threads opening catalogs at once
# (an indexer thread beside a server's request thread) would tear each other's down.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest migration's revision: what a database at the current schema records."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS}")
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration the database lacks, in one transaction per run."""
    _migrate(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to `revision` (for going back to an older release), in one transaction."""
    _migrate(engine, lambda cfg: command.downgrade(cfg, revision))


def _migrate(engine: Engine, run: Callable[[Config], None]) -> None:
    """Run Alembic on one connection of `engine`.

    On SQLite, foreign keys are off while migrating: rebuilding a table (Alembic's batch mode)
    drops the old one, and with foreign keys on that drop would cascade into the rows that
    reference it. They are checked once the migrations are done.
    """
    cfg = alembic_config()
    sqlite = engine.dialect.name == "sqlite"
    with _ALEMBIC_LOCK, engine.connect() as connection:
        if sqlite:
            _foreign_keys(connection, on=False)
        try:
            with connection.begin():
                _lock_schema(connection)
                cfg.attributes["connection"] = connection
                run(cfg)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"catalog migration left {len(broken)} rows without their parent: "
                                           f"{broken[:5]}")
        finally:
            if sqlite:
                _foreign_keys(connection, on=True)


# Any fixed number: PostgreSQL's advisory locks are keyed by one bigint per database.
_POSTGRES_SCHEMA_LOCK = 0x6C6F6F6B  # "look"


def _lock_schema(connection: Connection) -> None:
    """Hold the database's write lock for the whole migration, taken before Alembic reads the revision.

    Two processes opening a catalog that does not exist yet (a watcher and an index run started
    together) would otherwise both find no revision and both create the tables; the second now waits,
    then finds the schema at head and does nothing. SQLite's driver does not begin a transaction for
    DDL by itself, so the BEGIN IMMEDIATE also makes the migration one transaction there.
    """
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_POSTGRES_SCHEMA_LOCK})")


def _foreign_keys(connection: Connection, on: bool) -> None:
    """Switch SQLite's foreign keys (only takes effect outside a transaction, which is where this runs)."""
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    connection.commit()
