"""The local row source alone: a decode pool (threads) and the tiny TF1 test model, over real files."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from helpers import BLUE, RED, Counting, colour_image, sha256_of, unit, write_image
from model_fixtures import BLUE_CLASS, RED_CLASS

from indexer.local_source import LocalSource
from indexer.model import configured_model_id
from indexer.scan import FoundFile
from indexer.settings import Settings
from storage.catalog import Catalog, FileRef, NewImage
from storage.staging import FileOfImage, ToReread


def found(path: Path) -> FoundFile:
    return FoundFile(str(path), str(path.parent), path.stat().st_size, path.stat().st_mtime_ns)


def test_rows_are_hashed_decoded_only_when_new_and_embedded_in_one_pass(
        settings_for: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_for()
    red = write_image(tmp_path / "lib" / "red.png", colour_image(RED))
    blue = write_image(tmp_path / "lib" / "blue.png", colour_image(BLUE))
    known = write_image(tmp_path / "lib" / "known.png", colour_image(RED, seed=5))
    broken = tmp_path / "lib" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    mid = configured_model_id(settings.model)
    catalog = Catalog(settings.storage.resolved_database_url())
    try:  # known.png's content is in the catalog already (under another name)
        catalog.apply([NewImage(sha256_of(known), 64, 64, "PNG", mid, unit(1), [])],
                      [FileRef("/elsewhere/k.png", "/elsewhere", 1, 1, sha256_of(known))])
    finally:
        catalog.close()
    counter = Counting(settings)
    source = LocalSource(settings, mid, counter)
    source.open()
    try:
        rows = list(source.rows([found(p) for p in (red, blue, known, broken)], threading.Event()))
        assert [Path(r.file.path).name for r in rows] == ["red.png", "blue.png", "known.png", "broken.jpg"]
        assert [r.is_decoded for r in rows] == [True, True, False, False]
        assert rows[2].content_hash == sha256_of(known) and rows[3].error is not None
        assert counter.loads == 0  # reading never loads the model

        images = source.embed(rows[:2])
        assert counter.embedded == 2 and counter.loads == 1  # one forward pass for the batch
        assert [img.content_hash for img in images] == [sha256_of(red), sha256_of(blue)]
        assert [img.predictions[0][0] for img in images] == [RED_CLASS, BLUE_CLASS]
        assert all(img.model_id == mid for img in images)
        np.testing.assert_allclose([np.linalg.norm(img.embedding) for img in images], 1.0, atol=1e-5)
    finally:
        source.close(stop_workers=False)


def test_a_reindex_reads_known_content_again_and_refuses_changed_bytes(
        settings_for: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_for(model={"batch_size": 1})
    red = write_image(tmp_path / "lib" / "red.png", colour_image(RED))
    changed = write_image(tmp_path / "lib" / "changed.png", colour_image(BLUE))
    Catalog(settings.storage.resolved_database_url()).close()
    old_hash = sha256_of(changed)
    write_image(changed, colour_image(BLUE, seed=3))  # rewritten after it was indexed
    source = LocalSource(settings, configured_model_id(settings.model), Counting(settings))
    source.open()
    try:
        items = [(ToReread(1, sha256_of(red), (file_of(red),)), file_of(red)),
                 (ToReread(2, old_hash, (file_of(changed),)), file_of(changed))]
        done = list(source.reembed(items))
        assert [d.image.image_id for d in done] == [1, 2]
        assert done[0].error is None and done[0].embedding is not None and done[0].predictions[0][0] == RED_CLASS
        assert done[1].embedding is None and "changed since it was indexed" in (done[1].error or "")
    finally:
        source.close(stop_workers=False)


def file_of(path: Path) -> FileOfImage:
    return FileOfImage(str(path), str(path.parent), path.stat().st_size, path.stat().st_mtime_ns)
