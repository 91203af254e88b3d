"""Image ids are never reused: a cached thumbnail or file of id N must never show another picture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import REPO, new_image, ref

from storage.catalog import Catalog
from storage.schema_migrations import upgrade

ADD_ONE = """
import sys
from helpers import new_image, ref
from storage.catalog import Catalog
catalog = Catalog(sys.argv[1])
(image_id,), _ = catalog.apply([new_image(int(sys.argv[2]))], [ref(f"/lib/{sys.argv[2]}.jpg", int(sys.argv[2]))])
print(image_id)
"""


def url_of(catalog: Catalog) -> str:
    return catalog.engine.url.render_as_string(hide_password=False)


def test_the_highest_id_is_not_reused_after_a_delete(catalog: Catalog) -> None:
    ids, _ = catalog.apply([new_image(1), new_image(2), new_image(3)],
                           [ref("/lib/1.jpg", 1), ref("/lib/2.jpg", 2), ref("/lib/3.jpg", 3)])
    assert catalog.apply(removed_paths=["/lib/3.jpg"])[1] == [max(ids)]
    (fresh,), _ = catalog.apply([new_image(4)], [ref("/lib/4.jpg", 4)])
    assert fresh > max(ids)
    # The same after reopening the catalog (a new engine, new connections).
    catalog.apply(removed_paths=["/lib/4.jpg"])
    reopened = Catalog(url_of(catalog))
    try:
        (later,), _ = reopened.apply([new_image(5)], [ref("/lib/5.jpg", 5)])
    finally:
        reopened.close()
    assert later > fresh


@pytest.mark.subprocess
def test_ids_are_not_reused_across_process_restarts(catalog: Catalog) -> None:
    def add_in_new_process(seed: int) -> int:
        done = subprocess.run([sys.executable, "-c", ADD_ONE, url_of(catalog), str(seed)], capture_output=True,
                              text=True, timeout=120, cwd=REPO, env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    first = add_in_new_process(1)
    second = add_in_new_process(2)
    catalog.apply(removed_paths=["/lib/2.jpg"])  # the highest id is gone
    third = add_in_new_process(3)
    assert first < second < third


def test_upgrading_an_existing_sqlite_catalog_keeps_every_row_and_stops_reuse(tmp_path: Path) -> None:
    """The migration rebuilds the images table; its files and predictions (which cascade) must survive."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = sa.create_engine(url)
    upgrade(engine, "0003")
    with engine.begin() as conn:
        for i in (1, 2, 3):
            conn.exec_driver_sql(
                "INSERT INTO images (id, content_hash, width, height, format, model_id, embedding, indexed_at) "
                f"VALUES ({i}, '{i:064x}', 1, 1, 'PNG', 'm', x'0000803f', '2026-01-01')")
            conn.exec_driver_sql(f"INSERT INTO files (path, root, size, mtime_ns, image_id) "
                                 f"VALUES ('/lib/{i}.png', '/lib', 1, 1, {i})")
            conn.exec_driver_sql(f"INSERT INTO predictions VALUES ({i}, 0, 7, 0.5)")
    engine.dispose()

    catalog = Catalog(url)
    try:
        with catalog.engine.connect() as conn:
            assert "AUTOINCREMENT" in conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'images'").scalar_one().upper()
            counts = [conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                      for t in ("images", "files", "predictions")]
            assert counts == [3, 3, 3]
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert catalog.get_images([1, 2, 3])[3].predictions == ((7, 0.5),)
        catalog.apply(removed_paths=["/lib/3.png"])
        (fresh,), _ = catalog.apply([new_image(9)], [ref("/lib/9.jpg", 9)])
        assert fresh == 4
    finally:
        catalog.close()
