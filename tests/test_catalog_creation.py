"""Several processes opening one catalog that does not exist yet (a watcher and an index run started
together, two servers' workers): exactly one creates the schema, the others find it done."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
from helpers import drop_everything

from storage.catalog import Catalog
from storage.schema_migrations import head_revision

pytestmark = pytest.mark.subprocess

OPENERS = 4
# Each opener imports everything first, says so, and waits for the word to open the catalog, so the
# migrations overlap instead of running one after the other by luck of start-up times.
OPEN_AT_ONCE = """
import sys
from storage.catalog import Catalog
print("ready", flush=True)
sys.stdin.readline()
Catalog(sys.argv[1]).close()
print("opened")
"""


def test_processes_creating_one_new_catalog_at_once_all_open_it(database_url: str) -> None:
    for attempt in range(2):  # the overlap is what is tested: a second round makes a miss unlikely
        if attempt:
            drop_everything(database_url)
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, database_url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(OPENERS)]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=120) for proc in procs]
        failures = [err for proc, (_, err) in zip(procs, results, strict=True) if proc.returncode != 0]
        assert not failures, failures[0]
        assert all(out.strip() == "opened" for out, _ in results)
        catalog = Catalog(database_url, create=False)
        try:
            with catalog.engine.connect() as conn:
                assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == head_revision()
                assert conn.scalar(sa.text("SELECT count(*) FROM alembic_version")) == 1
        finally:
            catalog.close()
