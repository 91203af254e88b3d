from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from helpers import CATALOG_DIM, CATALOG_MODEL, new_image, ref, unit

from storage.catalog import Catalog
from storage.schema import Base
from storage.schema_migrations import upgrade
from storage.sync import check_model, open_index
from storage.vector_index import MANIFEST, IndexMismatchError, IndexStore, VectorIndex


def test_catalog_roundtrip_and_duplicates(catalog: Catalog) -> None:
    ids, orphans = catalog.apply([new_image(1), new_image(2)], [ref("/lib/a.jpg", 1), ref("/lib/b.jpg", 2),
                                                               ref("/lib/copy-of-a.jpg", 1)])
    assert orphans == [] and len(ids) == 2
    records = catalog.get_images(ids)
    a = records[ids[0]]
    assert a.paths == ("/lib/a.jpg", "/lib/copy-of-a.jpg") and a.path == "/lib/a.jpg"
    assert a.predictions == ((1, pytest.approx(0.9)), (2, pytest.approx(0.05)))
    assert catalog.count_images() == 2 and catalog.count_files() == 3
    np.testing.assert_array_equal(catalog.embedding(ids[1]), unit(2))
    assert set(catalog.files_under("/lib")) == {"/lib/a.jpg", "/lib/b.jpg", "/lib/copy-of-a.jpg"}
    assert catalog.files_under("/li") == {}
    assert catalog.model_ids() == {CATALOG_MODEL}


def test_removing_the_last_file_deletes_the_image(catalog: Catalog) -> None:
    ids, _ = catalog.apply([new_image(1)], [ref("/lib/a.jpg", 1), ref("/lib/b.jpg", 1)])
    assert catalog.apply(removed_paths=["/lib/a.jpg"]) == ([], [])
    assert catalog.apply(removed_paths=["/lib/b.jpg", "/lib/never-indexed.jpg"]) == ([], ids)
    assert catalog.count_images() == 0 and catalog.get_images(ids) == {}


def test_file_pointed_at_new_content_orphans_the_old(catalog: Catalog) -> None:
    (old,), _ = catalog.apply([new_image(1)], [ref("/lib/a.jpg", 1)])
    (new,), orphans = catalog.apply([new_image(2)], [ref("/lib/a.jpg", 2, size=200)])
    assert orphans == [old]
    assert catalog.files_under("/lib")["/lib/a.jpg"].image_id == new


def test_class_matching_rule(catalog: Catalog) -> None:
    ids, _ = catalog.apply(
        [new_image(1, ((5, 0.5), (6, 0.3), (7, 0.1))), new_image(2, ((6, 0.15), (5, 0.12))),
         new_image(3, ((7, 0.9), (5, 0.25)))],
        [ref("/lib/1.jpg", 1), ref("/lib/2.jpg", 2), ref("/lib/3.jpg", 3)],
    )
    # top-1 always matches; lower ranks match at >= 0.2
    assert list(catalog.ids_matching_classes([5], 0.2)) == [ids[0], ids[2]]
    assert list(catalog.ids_matching_classes([6], 0.2)) == [ids[0], ids[1]]
    assert list(catalog.ids_matching_classes([7], 0.2)) == [ids[2]]
    assert list(catalog.ids_matching_classes([6, 7], 0.2)) == sorted(ids)
    assert catalog.class_counts(0.2) == [(5, 2), (6, 2), (7, 1)]


def test_embeddings_stream_in_id_order(catalog: Catalog) -> None:
    images = [new_image(i) for i in range(25)]
    ids, _ = catalog.apply(images, [ref(f"/lib/{i}.jpg", i) for i in range(25)])
    batches = list(catalog.iter_embeddings(batch=10))
    assert [len(b[0]) for b in batches] == [10, 10, 5]
    all_ids = np.concatenate([b[0] for b in batches])
    assert list(all_ids) == sorted(ids)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[3], unit(3))


def filled_index(n: int = 50) -> VectorIndex:
    index = VectorIndex(CATALOG_DIM, CATALOG_MODEL)
    index.add(np.arange(100, 100 + n), np.stack([unit(i) for i in range(n)]))
    return index


def test_search_is_exact_and_keyed_by_catalog_ids() -> None:
    index = filled_index()
    hits = index.search(unit(7), 3)[0]
    assert hits[0] == (107, pytest.approx(1.0, abs=1e-5))
    vectors = np.stack([unit(i) for i in range(50)])
    expected = 100 + np.argsort(-(vectors @ unit(7)))[:3]
    assert [i for i, _ in hits] == list(expected)
    assert index.search(unit(7), 500)[0].__len__() == 50


def test_filter_inside_the_search_returns_k_whenever_k_match() -> None:
    index = filled_index()
    query = unit(7)
    scores = np.stack([unit(i) for i in range(50)]) @ query
    farthest = 100 + np.argsort(scores)[:5]  # the five least similar vectors
    hits = index.search(query, 5, allowed_ids=farthest)[0]
    assert sorted(i for i, _ in hits) == sorted(farthest)
    assert index.search(query, 10, allowed_ids=farthest)[0].__len__() == 5
    assert index.search(query, 10, allowed_ids=np.array([], np.int64)) == [[]]


def test_remove_and_dimension_checks() -> None:
    index = filled_index(10)
    assert index.remove(np.array([100, 105, 999])) == 2
    assert index.count == 8 and 105 not in index.ids()
    with pytest.raises(IndexMismatchError):
        index.add(np.array([1]), np.zeros((1, CATALOG_DIM + 1), np.float32))


def test_generations_are_published_atomically(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    assert store.manifest() is None
    first = store.publish(filled_index(10), high_water=109)
    second = store.publish(filled_index(20), high_water=119)
    assert (first.generation, second.generation) == (1, 2)
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [MANIFEST, "vectors-000002.faiss"]
    loaded = store.load(store.manifest())  # type: ignore[arg-type]
    assert loaded is not None and loaded.count == 20 and loaded.model_id == CATALOG_MODEL


def test_damaged_index_file_is_detected(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    manifest = store.publish(filled_index(10), high_water=109)
    path = tmp_path / "index" / manifest.file
    path.write_bytes(path.read_bytes()[:100])
    assert store.load(manifest) is None
    path.unlink()
    assert store.load(manifest) is None
    (tmp_path / "index" / MANIFEST).write_text("{not json")
    assert store.manifest() is None


def test_open_index_repairs_from_the_catalog(catalog: Catalog, tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    assert open_index(catalog, store, CATALOG_MODEL, publish_repairs=True) == (None, None)
    ids, _ = catalog.apply([new_image(i) for i in range(5)], [ref(f"/lib/{i}.jpg", i) for i in range(5)])
    index, manifest = open_index(catalog, store, CATALOG_MODEL, publish_repairs=True)  # no index yet: built
    assert index is not None and sorted(index.ids()) == sorted(ids) and manifest is not None
    (tmp_path / "index" / ".vectors-000009.faiss.123.tmp").write_bytes(b"half-written")  # a crashed writer
    assert open_index(catalog, store, CATALOG_MODEL, publish_repairs=True)[1] == manifest
    assert not list((tmp_path / "index").glob(".*.tmp"))
    catalog.apply([new_image(9)], [ref("/lib/9.jpg", 9)])  # catalog moved on without the index
    index, manifest2 = open_index(catalog, store, CATALOG_MODEL, publish_repairs=True)
    assert index is not None and index.count == 6 and manifest2.generation == manifest.generation + 1  # type: ignore[union-attr]
    (tmp_path / "index" / manifest2.file).unlink()  # type: ignore[union-attr]
    index, _ = open_index(catalog, store, CATALOG_MODEL, publish_repairs=False)
    assert index is not None and index.count == 6
    hits = index.search(unit(3), 1)[0]
    assert hits[0][0] == ids[3]


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8"])
def test_a_crashed_run_is_caught_up_not_rebuilt(tmp_path: Path, factory: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    store = IndexStore(tmp_path / "index")
    ids, _ = catalog.apply([new_image(i) for i in range(40)], [ref(f"/lib/{i}.jpg", i) for i in range(40)])
    index = VectorIndex(CATALOG_DIM, CATALOG_MODEL, factory=factory)
    vectors = np.stack([unit(i) for i in range(40)])
    index.train(vectors)
    index.add(np.asarray(ids), vectors)
    published = store.publish(index, catalog.max_image_id())
    # Then batches were committed, one image removed, and the process died before publishing.
    new_ids, _ = catalog.apply([new_image(i) for i in range(40, 50)], [ref(f"/lib/{i}.jpg", i) for i in range(40, 50)])
    removable = factory != "HNSW8"
    if removable:
        catalog.apply(removed_paths=["/lib/3.jpg"])
    caplog.set_level("WARNING", logger="storage.sync")
    repaired, manifest = open_index(catalog, store, CATALOG_MODEL, publish_repairs=True)
    assert repaired is not None and manifest is not None and manifest.generation == published.generation + 1
    assert sorted(repaired.ids()) == sorted(catalog.image_ids())
    assert "added 10 vectors, removed 1" in caplog.text if removable else "added 10 vectors, removed 0" in caplog.text
    assert "rebuilding" not in caplog.text
    assert repaired.search(unit(45), 1)[0][0][0] == new_ids[5]
    # An index type that cannot remove is rebuilt instead.
    if not removable:
        catalog.apply(removed_paths=["/lib/3.jpg"])
        caplog.clear()
        rebuilt, _ = open_index(catalog, store, CATALOG_MODEL, publish_repairs=True)
        assert "rebuilding" in caplog.text and rebuilt is not None and rebuilt.count == 49


def test_vectors_of_another_model_are_never_mixed(catalog: Catalog, tmp_path: Path) -> None:
    catalog.apply([new_image(1)], [ref("/lib/1.jpg", 1)])
    with pytest.raises(IndexMismatchError, match="--reindex"):
        check_model(catalog, "another-model@380")
    with pytest.raises(IndexMismatchError):
        open_index(catalog, IndexStore(tmp_path / "index"), "another-model@380", publish_repairs=True)


def test_migrations_create_exactly_the_models_schema(catalog: Catalog) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() is not None
    upgrade(catalog.engine)  # running again on an up-to-date database changes nothing
    assert sa.inspect(catalog.engine).get_table_names().__len__() == 8  # 7 tables + alembic_version
