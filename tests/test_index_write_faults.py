"""Disk full and I/O errors while an index generation is written, and index files damaged by hand.

The faults are injected at the OS boundary the index writer uses (file writes, fsync, rename):
the previous generation must stay current and loadable, the error must say what happened, the
catalog must keep every change, and the next run must complete.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import RED, catalog_of, colour_image, env_for, run_index, write_image

import storage.vector_index as vector_index
from indexer.model import configured_model_id
from indexer.settings import Settings
from lookalike.cli import cli
from storage.catalog import Catalog, FileRef, NewImage
from storage.sync import open_index
from storage.vector_index import IndexStore, IndexWriteError, VectorIndex
from storage.verify import verify

MODEL = "fault-model@64"
DIM = 8


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_images(catalog: Catalog, seeds: range) -> list[int]:
    vectors = unit_vectors(len(seeds), seeds.start)
    images = [NewImage(f"{s:064x}", 4, 4, "PNG", MODEL, v, ((1, 0.9),)) for s, v in zip(seeds, vectors, strict=True)]
    files = [FileRef(f"/lib/{s}.png", "/lib", 10, 1, f"{s:064x}") for s in seeds]
    ids, _ = catalog.apply(images, files)
    return ids


@pytest.fixture
def published(tmp_path: Path) -> Iterator[tuple[Catalog, IndexStore]]:
    """A catalog of 30 images and its index published as generation 1."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    add_images(catalog, range(30))
    store = IndexStore(tmp_path / "index")
    index, manifest = open_index(catalog, store, MODEL, publish_repairs=True)
    assert manifest is not None and manifest.generation == 1 and index is not None and index.count == 30
    yield catalog, store
    catalog.close()


class Failing:
    """Makes the nth call of an OS function (counted from installation) fail with `code`."""

    def __init__(self, real: Callable[..., object], nth: int, code: int) -> None:
        self.real, self.nth, self.code, self.calls = real, nth, code, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.calls == self.nth:
            raise OSError(self.code, os.strerror(self.code))
        return self.real(*args, **kwargs)


class ShortWriteFile:
    """A real file whose write stores half the bytes and then reports a full disk, as write(2) does."""

    def __init__(self, fh) -> None:  # type: ignore[no-untyped-def]
        self.fh = fh

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self.fh, name)

    def __enter__(self) -> ShortWriteFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def short_write_open(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
    return ShortWriteFile(open(path, mode, *args, **kwargs))


# Call order inside publish: fsync #1 new vectors temp file, #2 directory after its rename,
# #3 manifest temp file, #4 directory after the manifest rename; replace #1 vectors, #2 manifest.
BEFORE_MANIFEST_FAULTS = [
    ("write ENOSPC", "open", None, errno.ENOSPC),
    ("vectors fsync ENOSPC", "fsync", 1, errno.ENOSPC),
    ("vectors fsync EIO", "fsync", 1, errno.EIO),
    ("vectors rename EIO", "replace", 1, errno.EIO),
    ("directory fsync EIO", "fsync", 2, errno.EIO),
    ("manifest fsync ENOSPC", "fsync", 3, errno.ENOSPC),
    ("manifest rename EIO", "replace", 2, errno.EIO),
]


def inject(monkeypatch: pytest.MonkeyPatch, target: str, nth: int | None, code: int) -> None:
    if target == "open":
        monkeypatch.setattr(vector_index, "open", short_write_open, raising=False)
    else:
        monkeypatch.setattr(os, target, Failing(getattr(os, target), nth or 1, code))


@pytest.mark.parametrize(("name", "target", "nth", "code"), BEFORE_MANIFEST_FAULTS,
                         ids=[f[0] for f in BEFORE_MANIFEST_FAULTS])
def test_failed_publish_keeps_previous_generation(published: tuple[Catalog, IndexStore],
                                                  monkeypatch: pytest.MonkeyPatch, name: str, target: str,
                                                  nth: int | None, code: int) -> None:
    catalog, store = published
    before = store.manifest()
    assert before is not None
    files_before = sorted(p.name for p in store.directory.iterdir())
    new_ids = add_images(catalog, range(100, 110))
    grown, _ = open_index(catalog, store, MODEL, publish_repairs=False)
    assert grown is not None and grown.count == 40

    inject(monkeypatch, target, nth, code)
    with pytest.raises(IndexWriteError) as raised:
        store.publish(grown, catalog.max_image_id())
    message = str(raised.value)
    assert os.strerror(code) in message and "generation 2" in message and str(store.directory) in message
    assert "The previous generation stays current" in message
    monkeypatch.undo()

    # The previous generation is current and loads with its 30 vectors; nothing half-written is left.
    assert store.manifest() == before
    loaded = store.load(before)
    assert loaded is not None and loaded.count == 30
    assert sorted(p.name for p in store.directory.iterdir()) == files_before
    # The catalog kept every change, and the next start notices the index is behind and catches up.
    assert catalog.count_images() == 40 and set(new_ids) <= set(catalog.get_images(new_ids))
    repaired, manifest = open_index(catalog, store, MODEL, publish_repairs=True)
    assert manifest is not None and manifest.generation == 2 and manifest.count == 40
    assert repaired is not None and sorted(repaired.ids()) == sorted(np.concatenate([i for i, _ in
                                                                                    catalog.iter_embeddings()]))
    assert verify(catalog, store, MODEL).ok


def test_failure_after_the_manifest_rename_says_the_new_generation_is_current(
        published: tuple[Catalog, IndexStore], monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, store = published
    add_images(catalog, range(200, 205))
    grown, _ = open_index(catalog, store, MODEL, publish_repairs=False)
    assert grown is not None
    monkeypatch.setattr(os, "fsync", Failing(os.fsync, 4, errno.EIO))
    with pytest.raises(IndexWriteError, match="Generation 2 is current"):
        store.publish(grown, catalog.max_image_id())
    monkeypatch.undo()
    manifest = store.manifest()
    assert manifest is not None and manifest.generation == 2
    assert store.load(manifest) is not None and verify(catalog, store, MODEL).ok


def test_failing_cleanup_of_old_generations_is_not_an_error(published: tuple[Catalog, IndexStore],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, store = published
    index, _ = open_index(catalog, store, MODEL, publish_repairs=False)
    assert index is not None
    real_unlink = Path.unlink

    def refuse_old(path: Path, missing_ok: bool = False) -> None:
        if path.name.startswith("vectors-000001"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_old)
    manifest = store.publish(index, catalog.max_image_id())
    monkeypatch.undo()
    assert manifest.generation == 2 and (store.directory / "vectors-000001.faiss").exists()
    open_index(catalog, store, MODEL, publish_repairs=True)  # the next writer start cleans up
    assert not (store.directory / "vectors-000001.faiss").exists()


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "emptied": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "tail cut": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "garbage": lambda p: p.write_bytes(b"\x00not a faiss index" * 100),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("publish_repairs", [True, False], ids=["writer", "reader"])
def test_damaged_index_file_is_rebuilt_from_the_catalog(published: tuple[Catalog, IndexStore], damage: str,
                                                        publish_repairs: bool) -> None:
    catalog, store = published
    manifest = store.manifest()
    assert manifest is not None
    DAMAGE[damage](store.directory / manifest.file)
    assert not verify(catalog, store, MODEL).ok
    index, current = open_index(catalog, store, MODEL, publish_repairs=publish_repairs)
    assert index is not None and sorted(index.ids()) == list(range(1, 31))
    query = unit_vectors(1, 7)
    exact = VectorIndex(DIM, MODEL)
    for ids, vectors in catalog.iter_embeddings():
        exact.add(ids, vectors)
    assert index.search(query, 5) == exact.search(query, 5)
    if publish_repairs:
        assert current is not None and current.generation == 2 and verify(catalog, store, MODEL).ok
    else:  # a reader repairs in memory only and leaves the files to the writer
        assert store.manifest() == manifest


def test_garbled_manifest_is_rebuilt(published: tuple[Catalog, IndexStore]) -> None:
    catalog, store = published
    (store.directory / "manifest.json").write_text('{"generation": "x"')
    index, manifest = open_index(catalog, store, MODEL, publish_repairs=True)
    assert index is not None and index.count == 30 and manifest is not None and verify(catalog, store, MODEL).ok


def test_indexer_on_a_full_disk_reports_it_and_the_next_run_completes(
        settings_for: Callable[..., Settings], colour_library: Path, tmp_path: Path, tf1_module: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for()
    report, _ = run_index(settings, colour_library)
    assert report.indexed == 14
    store = IndexStore(settings.storage.data_dir / "index")
    first = store.manifest()
    assert first is not None and first.count == 14
    for i in range(5):
        write_image(colour_library / "more" / f"red{i}.png", colour_image(RED, seed=300 + i, accent=(200, 90, i * 9)))

    env = env_for(settings.storage.data_dir, tf1_module)
    monkeypatch.setattr(os, "fsync", Failing(os.fsync, 1, errno.ENOSPC))
    result = CliRunner().invoke(cli, ["index", str(colour_library)], env=env)
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "No space left on device" in output and "The previous generation stays current" in output
    assert "Traceback" not in result.output

    assert store.manifest() == first and store.load(first) is not None
    catalog = catalog_of(settings)
    try:
        assert catalog.count_images() == 19  # the five new images were committed before the index write
        mid = configured_model_id(settings.model)
        assert not verify(catalog, store, mid).ok  # the index is behind until the next run
        rerun = CliRunner().invoke(cli, ["index", "--json", str(colour_library)], env=env)
        assert rerun.exit_code == 0, rerun.output
        assert '"indexed": 0' in rerun.output  # nothing is embedded twice
        current = store.manifest()
        assert current is not None and current.count == 19 and verify(catalog, store, mid).ok
    finally:
        catalog.close()
