"""A consistent, self-contained copy of a data directory's catalog and index, taken while they are in use.

The SQLite catalog is copied with SQLite's online backup API in one step: one read snapshot,
so an indexer committing meanwhile neither blocks it nor tears it. The published index
generation is copied too, and then brought level with the copied catalog (the catalog may be
a few batches ahead of the generation, or behind it) exactly as an indexer does after a crash,
so the backup verifies clean on its own. The backup folder has the layout of a data directory:
restoring is copying it into one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from storage.catalog import Catalog
from storage.errors import SQLITE_FULL, CatalogError, describe, translate
from storage.sync import open_index
from storage.vector_index import MANIFEST, IndexStore, Manifest
from storage.verify import verify

log = logging.getLogger(__name__)

MARKER = "lookalike-backup.json"
CATALOG_FILE = "catalog.db"
INDEX_DIR = "index"
COPY_ATTEMPTS = 5  # a generation replaced while it is being opened is looked up again


class BackupError(RuntimeError):
    """The backup cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class BackupReport:
    destination: str
    catalog: str  # the copied SQLite file, or "" when the catalog is in PostgreSQL
    images: int
    generation: int | None
    vectors: int
    model_id: str | None
    seconds: float
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def check_destination(dest: Path) -> None:
    """A backup goes into a new or empty folder, or replaces a previous backup; never over other files."""
    if dest.exists() and not dest.is_dir():
        raise BackupError(f"{dest} is a file: give a folder for the backup")
    if dest.is_dir() and any(p for p in dest.iterdir() if not p.name.startswith(".incoming-")) \
            and not (dest / MARKER).is_file():
        raise BackupError(f"{dest} is not empty and holds no lookalike backup ({MARKER}): choose a new or empty "
                          "folder, or a previous backup to replace")


def back_up(database_url: str, index_dir: Path, dest: Path) -> BackupReport:
    """Copy the catalog (SQLite) and the published index generation into `dest`, level with each other.

    For a PostgreSQL catalog only the index is copied: the database is backed up with pg_dump.
    """
    started = time.monotonic()
    check_destination(dest)
    url = make_url(database_url)
    incoming = dest / f".incoming-{os.getpid()}"
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        incoming.mkdir(parents=True)
        manifest = _copy_generation(IndexStore(index_dir), incoming / INDEX_DIR)
        if url.get_backend_name() != "sqlite":
            report = BackupReport(str(dest), "", 0, manifest.generation if manifest else None,
                                  manifest.count if manifest else 0, manifest.model_id if manifest else None,
                                  time.monotonic() - started,
                                  f"the catalog is in PostgreSQL ({describe(url)}): back it up with pg_dump "
                                  "(e.g. `pg_dump -Fc -f catalog.dump DBNAME`), at about the same time; only the "
                                  "index was copied here")
        else:
            _copy_sqlite(Path(url.database or ""), incoming / CATALOG_FILE, describe(url))
            report = _level_and_check(incoming, dest, started)
        (incoming / MARKER).write_text(json.dumps({"format": 1, "created_at": time.time(), **report.to_json()},
                                                  indent=2), "utf-8")
        _replace_contents(incoming, dest)
    except OSError as exc:
        raise BackupError(f"cannot write the backup to {dest}: {exc.strerror or exc}. Nothing of the previous "
                          "contents of that folder was replaced.") from None
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    log.info("backed up %d images and index generation %s to %s", report.images, report.generation, dest)
    return report


def _copy_generation(store: IndexStore, target: Path) -> Manifest | None:
    """The current generation's file and manifest, copied from an open file (a newer publish may delete it)."""
    for _ in range(COPY_ATTEMPTS):
        manifest = store.manifest()
        if manifest is None:
            return None
        try:
            source = open(store.directory / manifest.file, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue  # replaced by a newer generation meanwhile
        target.mkdir(parents=True, exist_ok=True)
        with source, open(target / manifest.file, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        (target / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2), "utf-8")
        return manifest
    raise BackupError(f"the index in {store.directory} changed {COPY_ATTEMPTS} times while it was being copied; "
                      "run the backup again")


def _copy_sqlite(source: Path, target: Path, where: str) -> None:
    """SQLite's online backup in one step: a single consistent snapshot, taken while writers keep writing."""
    if not source.is_file():
        raise BackupError(f"no catalog at {source} to back up")
    src = sqlite3.connect(source, timeout=60)
    try:
        dst = sqlite3.connect(target)
        try:
            try:
                src.backup(dst)
            except sqlite3.Error as exc:
                if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_FULL:  # only the copy is written
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
                raise translate(exc, where) or CatalogError(f"cannot read the catalog {where}: {exc}") from None
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            dst.close()
    finally:
        src.close()


def _level_and_check(incoming: Path, dest: Path, started: float) -> BackupReport:
    """Bring the copied generation level with the copied catalog, and prove the pair verifies clean."""
    catalog = Catalog(f"sqlite:///{incoming / CATALOG_FILE}", create=False)
    try:
        models = sorted(catalog.model_ids())
        store = IndexStore(incoming / INDEX_DIR)
        manifest: Manifest | None = None
        if len(models) == 1:
            _, manifest = open_index(catalog, store, models[0], publish_repairs=True)
            report = verify(catalog, store, models[0])
            if not report.ok:
                raise BackupError("the copy does not verify clean, so the data directory itself is damaged: "
                                  + "; ".join(report.problems) + ". Run `lookalike verify` on it.")
        images = catalog.count_images()
    finally:
        catalog.close()
    return BackupReport(str(dest), str(dest / CATALOG_FILE), images, manifest.generation if manifest else None,
                        manifest.count if manifest else 0, models[0] if len(models) == 1 else None,
                        time.monotonic() - started)


def _replace_contents(incoming: Path, dest: Path) -> None:
    """Move the new backup's files into `dest`, replacing a previous backup's; the marker comes last."""
    names = [CATALOG_FILE, INDEX_DIR, MARKER]
    previous = dest / f".previous-{os.getpid()}"
    previous.mkdir(exist_ok=True)
    for name in reversed(names):  # the old marker goes first: a half-replaced folder never claims to be a backup
        if (dest / name).exists():
            os.replace(dest / name, previous / name)
    for name in names:
        if (incoming / name).exists():
            os.replace(incoming / name, dest / name)
    shutil.rmtree(previous, ignore_errors=True)
