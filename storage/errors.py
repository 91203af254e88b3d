"""Database failures as domain errors: which catalog is affected, what is wrong, and what to do.

Every catalog engine converts the driver's errors here (see `install_error_translation`), so
callers catch one family, `CatalogError`, instead of SQLite's and PostgreSQL's exceptions, and
no user ever sees "database disk image is malformed" as a traceback.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, ExceptionContext

# SQLite primary result codes (the low byte of an extended code).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 11, 13, 14, 26
# PostgreSQL SQLSTATEs.
PG_DISK_FULL = "53100"
PG_CORRUPTED = ("XX001", "XX002")  # data_corrupted, index_corrupted

RESTORE_HINT = ("Restore it from a backup (`lookalike backup DEST` makes one; docs/robustness.md says how to "
                "restore it), or index the library again into a new data directory (storage.data_dir). "
                "The photo library itself is untouched.")


class CatalogError(RuntimeError):
    """The catalog database cannot be used; the message names it and says what to do."""


class CatalogMissingError(CatalogError):
    """No catalog exists where the settings point, and the caller must not create one."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"no catalog at {where}: nothing has been indexed there yet. Create one with "
            "`lookalike index PATH`; if you meant another catalog, point storage.data_dir (or "
            "storage.database_url) at it, e.g. with `lookalike --config FILE ...` or LOOKALIKE_STORAGE__DATA_DIR."
        )
        self.where = where


class CatalogDamagedError(CatalogError):
    """The database file is corrupt (or not a database at all)."""


class CatalogFullError(CatalogError):
    """A write failed because the disk (or the database's size limit) is full."""


class DamagedVectorError(CatalogError):
    """A stored vector is NaN or not of unit length: the image cannot be compared until it is embedded again."""


class CatalogBusyError(CatalogError):
    """Another process held a lock on the catalog for longer than the busy timeout."""


class CatalogUnavailableError(CatalogError):
    """The catalog cannot be opened or written: missing folder, permissions, I/O error, no server."""


def describe(url: URL) -> str:
    """Where a catalog lives, for messages: the SQLite file, or the URL without its password."""
    if url.get_backend_name() == "sqlite":
        return str(Path(url.database)) if url.database and url.database != ":memory:" else "an in-memory database"
    return url.render_as_string(hide_password=True)


def _sqlite_error(exc: sqlite3.Error, where: str, folder: str) -> CatalogError | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    reason = str(exc)
    primary = code & 0xFF
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return CatalogDamagedError(f"the catalog {where} is damaged ({reason}). {RESTORE_HINT}")
    if primary == SQLITE_FULL:
        return CatalogFullError(
            f"cannot write the catalog {where}: {reason} (the disk holding {folder} is full, or the database "
            "reached its size limit). The change that failed was not saved; everything saved before it is kept "
            "and still searchable. Free some space there (or move storage.data_dir to a larger disk), then run "
            "the same command again."
        )
    if primary in (SQLITE_BUSY, SQLITE_LOCKED):
        return CatalogBusyError(
            f"the catalog {where} stayed locked by another process ({reason}); nothing was changed. "
            "Wait for the other lookalike command to finish, then run again."
        )
    if primary in (SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_IOERR):
        return CatalogUnavailableError(
            f"cannot use the catalog {where}: {reason}. Check that {folder} exists, is on a working disk and "
            "is writable by this user, then run again."
        )
    return None


def _postgres_error(exc: BaseException, where: str) -> CatalogError | None:
    sqlstate = getattr(exc, "sqlstate", None)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if sqlstate == PG_DISK_FULL:
        return CatalogFullError(
            f"cannot write the catalog {where}: {reason} (the database server's disk is full). The change that "
            "failed was not saved; everything saved before it is kept. Free space on the server, then run again."
        )
    if sqlstate in PG_CORRUPTED:
        return CatalogDamagedError(f"the catalog {where} is damaged ({reason}). Restore the database from a "
                                   "pg_dump backup, or index the library again into a new database.")
    if sqlstate is None and type(exc).__name__ == "OperationalError":  # no answer: refused, unknown host, auth
        return CatalogUnavailableError(f"cannot connect to the catalog {where}: {reason}. Check that the "
                                       "database server runs and storage.database_url is right.")
    return None


def translate(exc: BaseException, where: str, folder: str = "the data directory") -> CatalogError | None:
    """The domain error for a driver exception, or None when it is not one of the failures above."""
    if isinstance(exc, sqlite3.Error):
        return _sqlite_error(exc, where, folder)
    return _postgres_error(exc, where)


def install_error_translation(engine: Engine) -> None:
    """Make every statement on `engine` raise a CatalogError for the failures `translate` knows."""
    where = describe(engine.url)
    folder = str(Path(where).parent) if engine.dialect.name == "sqlite" else where

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> BaseException | None:
        return translate(context.original_exception, where, folder)
