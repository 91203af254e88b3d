"""A full disk while the catalog is written: a clear message and exit 1, nothing lost, the next run completes.

The condition is real: SQLite answers SQLITE_FULL ("database or disk is full") once a database
reaches `PRAGMA max_page_count`, exactly as it does when the disk runs out; the limit is set on
every connection the product opens while it is installed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import Library, catalog_of, env_for, run_index
from sqlalchemy import Engine, event

from indexer.model import configured_model_id
from indexer.settings import Settings
from lookalike.cli import cli
from search_api import create_app
from storage.errors import CatalogFullError
from storage.vector_index import IndexStore
from storage.verify import verify


@contextmanager
def disk_full_after(database: Path, extra_pages: int) -> Iterator[None]:
    """Every new connection may grow `database` by only `extra_pages` pages from now on."""
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        limit = conn.execute("PRAGMA page_count").fetchone()[0] + extra_pages

    def cap(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.execute(f"PRAGMA max_page_count={limit}")

    event.listen(Engine, "connect", cap)
    try:
        yield
    finally:
        event.remove(Engine, "connect", cap)


@pytest.fixture
def grown(indexed: Settings, tmp_path: Path) -> tuple[Settings, Library, Path]:
    """The indexed colour library, plus 120 new images in another folder, waiting to be indexed."""
    more = Library(tmp_path / "more", seed=3)
    more.add(120)
    return indexed, more, indexed.storage.data_dir / "catalog.db"


def assert_usable_then_completes(settings: Settings, library: Library, colour_library: Path) -> None:
    """What was committed answers queries; once space is back the same run completes and verifies clean."""
    catalog = catalog_of(settings)
    try:
        committed = catalog.count_images()
    finally:
        catalog.close()
    assert 14 <= committed < 134
    client = create_app(settings).test_client()
    response = client.get("/api/v1/images/1/similar?k=3")
    assert response.status_code == 200 and len(response.get_json()["results"]) == 3
    report, _ = run_index(settings, colour_library, library.root)
    assert report.indexed == 134 - committed
    catalog = catalog_of(settings)
    try:
        assert catalog.count_images() == 134
        assert verify(catalog, IndexStore(settings.storage.data_dir / "index"),
                      configured_model_id(settings.model)).ok
    finally:
        catalog.close()


def test_disk_full_in_process(grown: tuple[Settings, Library, Path], colour_library: Path) -> None:
    settings, more, database = grown
    with disk_full_after(database, 12), pytest.raises(CatalogFullError) as raised:
        run_index(settings, colour_library, more.root)
    message = str(raised.value)
    assert "database or disk is full" in message and str(settings.storage.data_dir.resolve()) in message
    assert "Free some space" in message and "run the same command again" in message
    assert_usable_then_completes(settings, more, colour_library)


def test_disk_full_through_the_cli(grown: tuple[Settings, Library, Path], colour_library: Path,
                                   tf1_module: Path) -> None:
    settings, more, database = grown
    env = env_for(settings.storage.data_dir, tf1_module) | {"LOOKALIKE_MODEL__BATCH_SIZE": "4",
                                                             "LOOKALIKE_INDEXER__COMMIT_EVERY": "4",
                                                             "LOOKALIKE_INDEXER__DECODE_IN_PROCESSES": "false"}
    runner = CliRunner()
    with disk_full_after(database, 12):
        result = runner.invoke(cli, ["index", str(colour_library), str(more.root)], env=env)
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "Traceback" not in result.output and "OperationalError" not in output
    assert f"cannot write the catalog {database.resolve()}: database or disk is full" in output
    assert f"the disk holding {settings.storage.data_dir.resolve()} is full" in output
    assert_usable_then_completes(settings, more, colour_library)
    stats = json.loads(runner.invoke(cli, ["stats", "--json"], env=env).stdout)
    assert stats["images"] == stats["vectors"] == 134


def test_a_data_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path, tf1_module: Path,
                                                        colour_library: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data directory should go")
    result = CliRunner().invoke(cli, ["index", str(colour_library)], env=env_for(blocker / "data", tf1_module))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot use the data directory {blocker / 'data'}: Not a directory" in " ".join(result.output.split())
