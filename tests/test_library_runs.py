"""Indexing runs over a changing library: rejections remembered, emptied roots refused, clean stops, thumbnails."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import BLUE, GREEN, RED, Counting, catalog_of, colour_image, env_for, run_index, write_image
from PIL import Image

from indexer.model import configured_model_id
from indexer.pipeline import LibraryIndexer
from indexer.scan import RootError
from indexer.settings import Settings
from indexer.thumbnails import thumbnail_dir, thumbnail_path
from lookalike.cli import cli
from lookalike.cli_index import stop_on_interrupt
from storage.catalog import Catalog
from storage.vector_index import IndexStore


def test_rejected_files_are_recorded_and_retried_only_when_changed(
    settings_for: Callable[..., Settings], colour_library: Path, tmp_path: Path
) -> None:
    broken = colour_library / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (colour_library / "empty.png").write_bytes(b"")
    settings = settings_for()
    first, _ = run_index(settings, colour_library)
    assert (first.indexed, first.failed, first.skipped) == (14, 2, 0)
    assert {f["kind"] for f in first.failures} == {"corrupt", "empty"}

    rejected = {r.path: r for r in catalog_of(settings).rejections()}
    assert set(rejected) == {str(broken.resolve()), str((colour_library / "empty.png").resolve())}
    record = rejected[str(broken.resolve())]
    assert record.kind == "corrupt" and "cannot decode" in record.reason

    again, counter = run_index(settings, colour_library)
    assert (again.indexed, again.failed, again.skipped, again.unchanged) == (0, 0, 2, 14) and counter.loads == 0

    # Fixed by the user: the file changes, so it is tried again and indexed; its rejection is forgotten.
    write_image(broken, colour_image(GREEN, seed=99), quality=90)
    os.utime(broken, ns=(time.time_ns(), time.time_ns() + 10**9))
    fixed, _ = run_index(settings, colour_library)
    assert (fixed.indexed, fixed.skipped) == (1, 1)
    assert [r.path for r in catalog_of(settings).rejections()] == [str((colour_library / "empty.png").resolve())]

    # A rejected file that is deleted is forgotten too.
    (colour_library / "empty.png").unlink()
    run_index(settings, colour_library)
    assert catalog_of(settings).rejections() == []


def test_errors_command_lists_rejections(runner: CliRunner, colour_library: Path, tmp_path: Path,
                                         tf1_module: Path) -> None:
    (colour_library / "page.jpg").write_bytes(b"<html><body>not a photo</body></html>")
    env = env_for(tmp_path / "data", tf1_module)
    assert runner.invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0
    listed = runner.invoke(cli, ["errors", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.stdout)
    assert entry["path"].endswith("page.jpg") and entry["kind"] == "not_image" and entry["rejected_at"]
    human = runner.invoke(cli, ["errors", "--root", str(colour_library)], env=env)
    assert "page.jpg\tnot_image\tnot an image" in human.stdout
    missing = runner.invoke(cli, ["errors", "--root", str(tmp_path / "nowhere")], env=env)
    assert missing.exit_code == 1 and "no such folder" in missing.output


def test_an_emptied_root_is_refused_and_nothing_is_removed(
    settings_for: Callable[..., Settings], colour_library: Path, tmp_path: Path
) -> None:
    settings = settings_for()
    run_index(settings, colour_library)
    # What an unmounted drive looks like: the mount point is there, empty.
    hidden = tmp_path / "elsewhere"
    colour_library.rename(hidden)
    colour_library.mkdir()
    with pytest.raises(RootError, match="Is the drive unmounted"):
        run_index(settings, colour_library)
    assert catalog_of(settings).count_images() == 14

    catalog = catalog_of(settings)
    indexer = LibraryIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                             configured_model_id(settings.model), Counting(settings))
    report = indexer.run([str(colour_library)], allow_empty_roots=True)
    assert report.removed == 14 and catalog.count_images() == 0


class _StopAfter:
    """A progress sink that sends this process SIGINT (as Ctrl-C does) after `n` files."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def start(self, total: int, found: int = 0) -> None:
        self.total = total

    def advance(self, outcome: str) -> None:
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_after_the_batch_and_the_next_run_resumes(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    root = tmp_path / "many"
    for i in range(40):
        write_image(root / f"img{i:02d}.png", colour_image((RED, GREEN, BLUE)[i % 3], seed=i))
    settings = settings_for(model={"batch_size": 4}, indexer={"commit_every": 4})
    catalog = catalog_of(settings)
    store = IndexStore(settings.storage.data_dir / "index")
    indexer = LibraryIndexer(settings, catalog, store, configured_model_id(settings.model),
                             Counting(settings), progress=_StopAfter(6))
    with stop_on_interrupt(indexer):
        report = indexer.run([str(root)])
    assert report.interrupted and 6 <= report.indexed < 40
    assert catalog.count_images() == report.indexed
    manifest = store.manifest()
    assert manifest is not None and manifest.count == report.indexed  # what was done is searchable

    rest, counter = run_index(settings, root)
    assert not rest.interrupted and rest.indexed == 40 - report.indexed and rest.unchanged == report.indexed
    assert counter.embedded == 40 - report.indexed and catalog.count_images() == 40


@pytest.mark.parametrize("processes", [pytest.param(True, marks=pytest.mark.subprocess), False])
def test_thumbnails_are_upright_webp_without_exif(
    settings_for: Callable[..., Settings], tmp_path: Path, processes: bool
) -> None:
    root = tmp_path / "photos"
    photo = colour_image(RED, size=(400, 200), accent=BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    exif[0x010F] = "Camera maker"
    write_image(root / "sideways.jpg", photo, exif=exif.tobytes(), quality=95)
    settings = settings_for(indexer={"thumbnail_size": 128, "decode_in_processes": processes})
    report, _ = run_index(settings, root)
    assert report.indexed == 1
    (record,) = Catalog(settings.storage.resolved_database_url()).get_images([1]).values()
    assert (record.width, record.height) == (200, 400)
    path = thumbnail_path(settings.storage.data_dir, record.content_hash)
    with Image.open(path) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (64, 128)
        assert not thumb.getexif()
        # The accent (blue, top-left when stored) sits top-right once rotated upright.
        r, g, b = thumb.convert("RGB").getpixel((48, 16))
        assert b > 150 and r < 100

    root.joinpath("sideways.jpg").unlink()
    catalog = catalog_of(settings)
    indexer = LibraryIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                             configured_model_id(settings.model), Counting(settings))
    indexer.run([str(root)], allow_empty_roots=True)
    assert not path.exists() and not list(thumbnail_dir(settings.storage.data_dir).glob("*/*.webp"))
