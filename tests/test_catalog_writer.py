"""The catalog writer alone: commits, the live index that follows them, rebuilds and publication,
on a real SQLite catalog and real FAISS indexes, with vectors made up (no model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CATALOG_MODEL, new_image, ref
from sqlalchemy.exc import IntegrityError

from indexer.batch import Batch
from indexer.catalog_writer import BackgroundCommits, CatalogWriter
from indexer.prepare import Prepared
from indexer.report import IndexReport
from indexer.scan import FoundFile
from indexer.thumbnails import thumbnail_path
from storage.catalog import Catalog, FileRef
from storage.index_factory import IndexConfig
from storage.rejections import Rejection
from storage.vector_index import IndexStore
from storage.verify import verify

AFTER_2262 = 2**63 + 5  # a file time in nanoseconds that no catalog column holds


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield catalog
    catalog.close()


def writer_for(catalog: Catalog, tmp_path: Path, *, thumbnails_of: Path | None = None,
               publish_every_seconds: float = 0.0, merge_known_content: bool = False) -> CatalogWriter:
    writer = CatalogWriter(catalog, IndexStore(tmp_path / "index"), CATALOG_MODEL, IndexConfig(),
                           publish_every_seconds=publish_every_seconds, thumbnails_of=thumbnails_of,
                           merge_known_content=merge_known_content)
    writer.open()
    return writer


def batch_of(*seeds: int, rejected: tuple[Rejection, ...] = ()) -> Batch[Prepared]:
    return Batch([ref(f"/lib/{s}.jpg", s) for s in seeds], list(rejected), [new_image(s) for s in seeds])


def test_the_first_batches_build_the_index_at_the_end_and_publish_it_once(catalog: Catalog, tmp_path: Path) -> None:
    writer = writer_for(catalog, tmp_path)
    assert writer.index is None  # an empty catalog has no index yet
    writer.commit(batch_of(1, 2))
    writer.commit(batch_of(3))
    assert catalog.count_images() == 3 and writer.store.manifest() is None  # committed, not published yet
    writer.finish()
    manifest = writer.store.manifest()
    assert manifest is not None and (manifest.count, manifest.generation) == (3, 1)
    assert verify(catalog, writer.store, CATALOG_MODEL).ok


def test_commits_reach_the_live_index_at_once_and_removals_leave_it(catalog: Catalog, tmp_path: Path) -> None:
    first = writer_for(catalog, tmp_path)
    first.commit(batch_of(1, 2))
    first.finish()
    writer = writer_for(catalog, tmp_path)  # a later run, over the published generation
    assert writer.index is not None and writer.index.count == 2
    writer.commit(batch_of(3, 4))
    assert sorted(writer.index.ids().tolist()) == [1, 2, 3, 4]
    writer.remove(["/lib/1.jpg", "/lib/3.jpg"])
    assert sorted(writer.index.ids().tolist()) == [2, 4] and catalog.count_images() == 2
    writer.finish()
    manifest = writer.store.manifest()
    assert manifest is not None and (manifest.count, manifest.generation) == (2, 2)
    assert verify(catalog, writer.store, CATALOG_MODEL).ok


def test_thumbnails_of_images_that_left_the_catalog_are_pruned(catalog: Catalog, tmp_path: Path) -> None:
    data = tmp_path / "data"
    writer = writer_for(catalog, tmp_path, thumbnails_of=data)
    writer.commit(batch_of(1, 2))
    thumbs = [thumbnail_path(data, f"{seed:064x}") for seed in (1, 2)]
    for thumb in thumbs:
        thumb.parent.mkdir(parents=True, exist_ok=True)
        thumb.write_bytes(b"webp")
    writer.remove(["/lib/1.jpg"])
    writer.finish()
    assert [t.exists() for t in thumbs] == [False, True]


def test_nothing_is_pruned_when_no_image_left(catalog: Catalog, tmp_path: Path) -> None:
    data = tmp_path / "data"
    stray = thumbnail_path(data, "ff" * 32)  # no image holds it, but this run removed nothing
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"webp")
    writer = writer_for(catalog, tmp_path, thumbnails_of=data)
    writer.commit(batch_of(1))
    writer.finish()
    assert stray.exists()


def test_a_batch_whose_new_content_waits_for_the_model_is_refused(catalog: Catalog, tmp_path: Path) -> None:
    writer = writer_for(catalog, tmp_path)
    batch = batch_of(1)
    batch.waiting.append(Prepared(FoundFile("/lib/2.jpg", "/lib", 100, 1), f"{2:064x}"))
    with pytest.raises(ValueError, match="1 rows still wait for the model"):
        writer.commit(batch)
    assert catalog.count_images() == 0


def test_a_file_the_catalog_cannot_store_is_rejected_alone(catalog: Catalog, tmp_path: Path) -> None:
    writer = writer_for(catalog, tmp_path)
    far_future = FileRef("/lib/far.jpg", "/lib", 100, AFTER_2262, f"{3:064x}")
    batch = batch_of(1, 2)
    batch.files.append(far_future)
    batch.new_images.append(new_image(3))
    writer.commit(batch)
    assert catalog.count_images() == 2 and sorted(catalog.files_under("/lib")) == ["/lib/1.jpg", "/lib/2.jpg"]
    assert [(r.path, r.kind) for r in catalog.rejections()] == [("/lib/far.jpg", "unstorable")]
    report = IndexReport(indexed=3, linked=0)  # as the run counted them before the commit
    writer.count_unstored_in(report)
    assert (report.indexed, report.linked, report.failed) == (2, 0, 1)
    assert report.failures[0]["path"] == "/lib/far.jpg" and "cannot store this file" in report.failures[0]["error"]
    writer.finish()
    assert verify(catalog, writer.store, CATALOG_MODEL).ok


def test_merging_writer_links_content_another_writer_committed(catalog: Catalog, tmp_path: Path) -> None:
    catalog.apply([new_image(1)], [ref("/lib/1.jpg", 1)])  # what another writer (or a delivered retry) left
    plain = writer_for(catalog, tmp_path)
    with pytest.raises(IntegrityError):
        plain.commit(batch_of(1, 2))
    merging = writer_for(catalog, tmp_path, merge_known_content=True)
    merging.commit(batch_of(1, 2))
    merging.commit(batch_of(1, 2))  # the same batch delivered again
    assert catalog.count_images() == 2 and sorted(catalog.files_under("/lib")) == ["/lib/1.jpg", "/lib/2.jpg"]
    merging.finish()
    assert verify(catalog, merging.store, CATALOG_MODEL).ok


def test_a_long_run_publishes_as_it_goes(catalog: Catalog, tmp_path: Path) -> None:
    first = writer_for(catalog, tmp_path)
    first.commit(batch_of(1))
    first.finish()
    writer = writer_for(catalog, tmp_path, publish_every_seconds=1e-9)
    writer.commit(batch_of(2))
    manifest = writer.store.manifest()
    assert manifest is not None and (manifest.count, manifest.generation) == (2, 2)  # before the run's end


def test_an_index_that_cannot_remove_is_rebuilt_from_the_catalog(catalog: Catalog, tmp_path: Path) -> None:
    hnsw = IndexConfig(factory="HNSW16")
    first = CatalogWriter(catalog, IndexStore(tmp_path / "index"), CATALOG_MODEL, hnsw)
    first.open()
    first.commit(batch_of(1, 2, 3))
    first.finish()
    writer = CatalogWriter(catalog, IndexStore(tmp_path / "index"), CATALOG_MODEL, hnsw)
    writer.open()
    writer.remove(["/lib/2.jpg"])
    writer.finish()
    assert writer.index is not None and sorted(writer.index.ids().tolist()) == [1, 3]
    assert verify(catalog, writer.store, CATALOG_MODEL, hnsw).ok


def test_background_commits_keep_their_order_and_raise_the_failure(catalog: Catalog, tmp_path: Path) -> None:
    writer = writer_for(catalog, tmp_path)
    with BackgroundCommits(writer.commit) as commits:
        commits.submit(batch_of(1))
        commits.submit(Batch())  # nothing to commit: not handed over
        commits.submit(batch_of(2))
    assert sorted(catalog.files_under("/lib")) == ["/lib/1.jpg", "/lib/2.jpg"]
    with pytest.raises(IntegrityError), BackgroundCommits(writer.commit) as commits:
        commits.submit(batch_of(2))  # the same content again, from a writer that does not merge
        commits.wait()
