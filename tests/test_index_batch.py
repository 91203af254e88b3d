"""The batch object of an indexing run and the predicate that decides what the model embeds."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.batch import Batch, commit_size, needs_embedding
from indexer.images import DecodedImage
from indexer.prepare import Prepared
from indexer.scan import FoundFile
from storage.catalog import FileRef, NewImage
from storage.rejections import Rejection

PIXELS = DecodedImage(np.zeros((4, 4, 3), np.uint8), 4, 4, "PNG")


def row(name: str, digest: str = "", decoded: bool = False, kind: str | None = None,
        error: str | None = None) -> Prepared:
    return Prepared(FoundFile(f"/lib/{name}", "/lib", 10, 20), digest, PIXELS if decoded else None, kind, error)


def test_only_decoded_content_not_embedded_this_run_needs_the_model() -> None:
    assert needs_embedding("a", decoded=True, embedded=set())
    assert not needs_embedding("a", decoded=True, embedded={"a"})  # a copy met earlier in the run
    assert not needs_embedding("a", decoded=False, embedded=set())  # the catalog holds it: hashed only
    embedded = {"b"}
    needs_embedding("a", decoded=True, embedded=embedded)
    assert embedded == {"b"}  # a predicate: the caller records what it embeds


def test_a_batch_records_files_and_rejections_in_order_and_counts_both() -> None:
    batch: Batch[Prepared] = Batch()
    assert batch.is_empty() and batch.size == 0
    batch.add_file(row("a.jpg", "h1", decoded=True))
    rejection = batch.reject(row("b.jpg", "h2", kind="truncated", error="the file ends early"))
    batch.reject(row("c.jpg", error="cannot identify image"))  # no kind given: corrupt
    batch.add_file(row("d.jpg", "h1"))
    assert batch.size == 4 and not batch.is_empty()
    assert batch.files == [FileRef("/lib/a.jpg", "/lib", 10, 20, "h1"), FileRef("/lib/d.jpg", "/lib", 10, 20, "h1")]
    assert rejection == Rejection("/lib/b.jpg", "/lib", 10, 20, "truncated", "the file ends early")
    assert [(r.path, r.kind) for r in batch.rejected] == [("/lib/b.jpg", "truncated"), ("/lib/c.jpg", "corrupt")]


def test_waiting_rows_are_handed_over_once() -> None:
    batch: Batch[Prepared] = Batch()
    first, second = row("a.jpg", "h1", decoded=True), row("b.jpg", "h2", decoded=True)
    batch.waiting += [first, second]
    assert not batch.is_empty() and batch.size == 0  # waiting rows are counted by their files
    assert batch.take_waiting() == [first, second]
    assert batch.take_waiting() == [] and batch.is_empty()
    batch.new_images.append(NewImage("h1", 4, 4, "PNG", "m", np.ones(2, np.float32), []))
    assert not batch.is_empty()


@pytest.mark.parametrize(("configured", "model_batch", "expected"), [(256, 8, 256), (4, 64, 64), (1, 1, 1)])
def test_a_commit_holds_at_least_one_model_batch(configured: int, model_batch: int, expected: int) -> None:
    assert commit_size(configured, model_batch) == expected
