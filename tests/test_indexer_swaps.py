"""Files swapped after the scan: the decode workers never read through a symbolic link and never
block on a FIFO; such a file is rejected like any bad file, and nothing of it is stored."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import GREEN, RED, catalog_of, colour_image, jpeg, run_index, write_image

from indexer.model import Embedder, configured_model_id
from indexer.pipeline import IndexReport, LibraryIndexer
from indexer.settings import Settings
from indexer.thumbnails import thumbnail_path
from storage.vector_index import IndexStore

RUN_SECONDS = 60


class _SwapAfterScan:
    """A progress sink that swaps a planned file when the run starts, before any file is read."""

    def __init__(self, swap: Callable[[], None]) -> None:
        self.swap = swap
        self.total = -1

    def start(self, total: int, found: int = 0) -> None:
        self.total = total
        self.swap()

    def advance(self, outcome: str) -> None:
        pass


def _run_with(settings: Settings, root: Path, progress: _SwapAfterScan) -> IndexReport:
    catalog = catalog_of(settings)
    try:
        indexer = LibraryIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                                 configured_model_id(settings.model),
                                 lambda: Embedder.from_settings(settings.model), progress=progress)
        return indexer.run([str(root)])
    finally:
        catalog.close()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    for i in range(4):
        write_image(root / f"b{i}.jpg", colour_image(RED, seed=i, accent=(200, 40 * i, 30)), quality=90)
    write_image(root / "aaa.jpg", colour_image(RED, seed=9), quality=90)
    return root.resolve()


@pytest.mark.parametrize("processes", [False, pytest.param(True, marks=pytest.mark.subprocess)],
                         ids=["threads", "processes"])
def test_a_file_swapped_for_a_symlink_after_the_scan_is_rejected_not_read(
    settings_for: Callable[..., Settings], library: Path, tmp_path: Path, processes: bool
) -> None:
    outside = tmp_path / "outside" / "private.jpg"
    outside.parent.mkdir()
    outside.write_bytes(jpeg(colour_image(GREEN, seed=3)))
    outside_hash = hashlib.sha256(outside.read_bytes()).hexdigest()
    victim = library / "aaa.jpg"

    def swap() -> None:
        victim.unlink()
        victim.symlink_to(outside)

    settings = settings_for(indexer={"decode_in_processes": processes})
    progress = _SwapAfterScan(swap)
    report = _run_with(settings, library, progress)
    assert progress.total == 5  # planned before the swap
    assert (report.indexed, report.failed) == (4, 1)
    (failure,) = report.failures
    assert failure["path"] == str(victim) and failure["kind"] == "not_a_file" and "symbolic link" in failure["error"]
    catalog = catalog_of(settings)
    try:
        assert catalog.image_id_for_path(str(victim)) is None
        assert outside_hash not in catalog.content_hashes()
    finally:
        catalog.close()
    assert not thumbnail_path(settings.storage.data_dir, outside_hash).exists()

    again, _ = run_index(settings, library)  # the link is no library file: its rejection is forgotten
    assert (again.unchanged, again.failed, again.removed) == (4, 0, 1)


@pytest.mark.parametrize("processes", [False, pytest.param(True, marks=pytest.mark.subprocess)],
                         ids=["threads", "processes"])
def test_a_file_swapped_for_a_fifo_after_the_scan_never_hangs_the_run(
    settings_for: Callable[..., Settings], library: Path, processes: bool
) -> None:
    victim = library / "aaa.jpg"

    def swap() -> None:
        victim.unlink()
        os.mkfifo(victim)

    settings = settings_for(indexer={"decode_in_processes": processes})
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = _run_with(settings, library, _SwapAfterScan(swap))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(RUN_SECONDS)
    hung = thread.is_alive()
    if hung:  # let the stuck reader go (open for writing, then close: it reads end-of-file)
        os.close(os.open(victim, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(RUN_SECONDS)
    assert not hung, "the indexer blocked on a FIFO"
    report = outcome["report"]
    assert isinstance(report, IndexReport), outcome
    assert (report.indexed, report.failed) == (4, 1)
    assert report.failures[0]["kind"] == "not_a_file" and "FIFO" in report.failures[0]["error"]
