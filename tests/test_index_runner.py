"""The runner alone, fed by a tiny real row source (files read and hashed, vectors derived from the
hash instead of a model), over a real library folder, SQLite catalog and FAISS index."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import CATALOG_MODEL, unit

from indexer.catalog_writer import CatalogWriter
from indexer.reindex import Reembedded
from indexer.runner import IndexRunner
from indexer.scan import FoundFile
from storage.catalog import Catalog, NewImage
from storage.index_factory import IndexConfig
from storage.staging import FileOfImage, ToReread
from storage.vector_index import IndexStore
from storage.verify import verify


@dataclass(frozen=True)
class Row:
    file: FoundFile
    content_hash: str = ""
    error_kind: str | None = None
    error: str | None = None
    is_decoded: bool = False


class HashSource:
    """Reads each candidate; bytes starting with `bad` are rejected; content the catalog lacks is 'decoded'."""

    embed_batch = 2

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.embedded: list[int] = []  # rows per embed call
        self.read: list[Path] = []
        self.closed_with: bool | None = None
        self.on_row = lambda taken: None

    def open(self) -> None:
        self.closed_with = None

    def close(self, stop_workers: bool) -> None:
        self.closed_with = stop_workers

    def rows(self, candidates: Sequence[FoundFile], stop: threading.Event) -> Iterator[Row]:
        for taken, found in enumerate(candidates, 1):
            data = Path(found.path).read_bytes()
            self.read.append(Path(found.path))
            self.on_row(taken)
            if data.startswith(b"bad"):
                yield Row(found, error_kind="truncated", error="the file ends early")
            else:
                digest = hashlib.sha256(data).hexdigest()
                yield Row(found, digest, is_decoded=not self.catalog.ids_for_hashes([digest]))

    def embed(self, rows: Sequence[Row]) -> list[NewImage]:
        self.embedded.append(len(rows))
        return [NewImage(r.content_hash, 4, 3, "PNG", CATALOG_MODEL, unit(int(r.content_hash[:8], 16)), [(7, 0.9)])
                for r in rows]

    def reembed(self, items: Iterable[tuple[ToReread, FileOfImage]]) -> Iterator[Reembedded]:
        raise AssertionError("no reindex in these tests")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield catalog
    catalog.close()


def runner_for(catalog: Catalog, tmp_path: Path, commit_every: int = 3) -> tuple[IndexRunner[Row], HashSource]:
    writer = CatalogWriter(catalog, IndexStore(tmp_path / "index"), CATALOG_MODEL, IndexConfig())
    source = HashSource(catalog)
    return IndexRunner(catalog, source, writer, commit_every=commit_every), source


def library(root: Path, contents: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (root / name).write_bytes(data)
    return root.resolve()


def test_rows_become_commits_links_and_rejections(catalog: Catalog, tmp_path: Path) -> None:
    root = library(tmp_path / "lib", {"a.png": b"A", "b.png": b"B", "a-copy.png": b"A", "bad.png": b"bad",
                                      "c.png": b"C", "d.png": b"D"})
    runner, source = runner_for(catalog, tmp_path)
    report = runner.run([str(root)])
    assert (report.indexed, report.linked, report.failed, report.found) == (4, 1, 1, 6)
    assert report.failures == [{"path": str(root / "bad.png"), "kind": "truncated", "error": "the file ends early"}]
    assert sum(source.embedded) == 4 and max(source.embedded) <= HashSource.embed_batch
    assert catalog.count_images() == 4 and catalog.count_files() == 5
    assert source.closed_with is False  # a run that ends by itself waits for its workers
    assert verify(catalog, runner.writer.store, CATALOG_MODEL).ok

    (root / "d.png").unlink()
    again = runner_for(catalog, tmp_path)[0].run([str(root)])
    assert (again.indexed, again.unchanged, again.skipped, again.removed) == (0, 4, 1, 1)  # bad.png: skipped
    assert catalog.count_images() == 3


def test_a_stop_request_commits_every_row_taken_and_publishes(catalog: Catalog, tmp_path: Path) -> None:
    root = library(tmp_path / "lib", {f"{i:02d}.png": bytes([i]) for i in range(10)})
    runner, source = runner_for(catalog, tmp_path, commit_every=4)
    source.on_row = lambda taken: runner.request_stop() if taken == 5 else None
    report = runner.run([str(root)])
    assert report.interrupted and report.indexed == 5 == catalog.count_images()  # the half batch too
    manifest = runner.writer.store.manifest()
    assert manifest is not None and manifest.count == 5
    assert source.closed_with is True  # a stopped run does not wait for busy workers

    rest = runner_for(catalog, tmp_path, commit_every=4)[0].run([str(root)])
    assert (rest.indexed, rest.unchanged, rest.interrupted) == (5, 5, False)


def test_a_source_that_fails_keeps_what_was_committed_and_leaves_its_workers(catalog: Catalog,
                                                                              tmp_path: Path) -> None:
    root = library(tmp_path / "lib", {f"{i:02d}.png": bytes([i]) for i in range(8)})
    runner, source = runner_for(catalog, tmp_path, commit_every=2)

    def vanish_the_rest(taken: int) -> None:
        if taken == 5:
            for path in set(root.iterdir()) - set(source.read):
                path.unlink()

    source.on_row = vanish_the_rest
    with pytest.raises(FileNotFoundError):
        runner.run([str(root)])
    assert source.closed_with is True
    # The two full commits before the failure stay; the fifth row, taken but not committed, does not.
    assert sorted(catalog.files_under(str(root))) == sorted(str(p) for p in source.read[:4])
    assert catalog.count_images() == 4
