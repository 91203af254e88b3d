from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import BLUE, RED, catalog_of, colour_image, run_index, write_image
from model_fixtures import BLUE_CLASS, GREEN_CLASS, RED_CLASS

from indexer.model import configured_model_id
from indexer.scan import RootError, resolve_root, scan
from indexer.settings import Settings
from storage.lock import LockedError, writer_lock
from storage.vector_index import IndexMismatchError, IndexStore


def test_scan_finds_images_recursively_and_skips_the_rest(colour_library: Path, tmp_path: Path) -> None:
    outside = write_image(tmp_path / "outside" / "secret.png", colour_image(RED))
    (colour_library / "link-out.png").symlink_to(outside)
    (colour_library / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    write_image(colour_library / ".thumbnails" / "t.jpg", colour_image(RED))
    found = list(scan(resolve_root(colour_library)))
    names = sorted(Path(f.path).name for f in found)
    assert len(names) == 14 and "secret.png" not in names and "t.jpg" not in names
    assert all(f.root == str(colour_library.resolve()) and f.size > 0 for f in found)


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RootError, match="no such folder"):
        resolve_root(tmp_path / "unmounted")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(RootError, match="not a folder"):
        resolve_root(tmp_path / "file.jpg")


def test_index_then_rerun_embeds_nothing(settings_for: Callable[..., Settings], colour_library: Path) -> None:
    settings = settings_for()
    report, counter = run_index(settings, colour_library)
    assert (report.indexed, report.unchanged, report.removed, report.failed) == (14, 0, 0, 0)
    assert counter.embedded == 14
    cat = catalog_of(settings)
    assert cat.count_images() == 14
    records = cat.get_images(range(1, 15))
    top1 = {Path(r.path).name: r.predictions[0][0] for r in records.values()}
    assert {top1[f"red{i}.jpg"] for i in range(6)} == {RED_CLASS}
    assert {top1[f"blue{i}.png"] for i in range(5)} == {BLUE_CLASS}
    assert top1["green0.webp"] == top1["green2.tiff"] == GREEN_CLASS
    assert all(len(r.predictions) == 5 for r in records.values())
    manifest = IndexStore(settings.storage.data_dir / "index").manifest()
    assert manifest is not None and manifest.count == 14 and manifest.generation == 1

    again, counter2 = run_index(settings, colour_library)
    assert (again.indexed, again.unchanged, again.removed) == (0, 14, 0)
    assert counter2.loads == 0, "an unchanged library must not even load the model"
    assert IndexStore(settings.storage.data_dir / "index").manifest().generation == 1  # type: ignore[union-attr]


def test_changed_moved_duplicated_and_deleted_files(settings_for: Callable[..., Settings],
                                                    colour_library: Path) -> None:
    settings = settings_for()
    run_index(settings, colour_library)
    red0 = colour_library / "red" / "red0.jpg"
    write_image(red0, colour_image(BLUE, seed=99), quality=95)  # changed content
    os.utime(red0, ns=(1, 1))
    shutil.move(colour_library / "red" / "red1.jpg", colour_library / "moved.jpg")  # moved
    shutil.copy(colour_library / "blue" / "deep" / "blue0.png", colour_library / "blue-copy.png")  # duplicate
    (colour_library / "red" / "red2.jpg").unlink()  # deleted

    report, counter = run_index(settings, colour_library)
    assert report.indexed == 1 and counter.embedded == 1  # only the changed file is embedded again
    assert report.linked == 2  # the moved file and the duplicate reuse their vectors
    assert report.removed == 2  # red1.jpg (moved away) and red2.jpg
    cat = catalog_of(settings)
    assert cat.count_files() == 14 and cat.count_images() == 13
    store = IndexStore(settings.storage.data_dir / "index")
    index = store.load(store.manifest())  # type: ignore[arg-type]
    assert index is not None and sorted(index.ids()) == sorted(cat.get_images(range(1, 30)))
    files = cat.files_under(str(colour_library.resolve()))
    blue0 = files[str((colour_library / "blue" / "deep" / "blue0.png").resolve())]
    assert files[str((colour_library / "blue-copy.png").resolve())].image_id == blue0.image_id
    assert cat.get_images([files[str(red0.resolve())].image_id]).popitem()[1].predictions[0][0] == BLUE_CLASS


def test_bad_files_are_reported_and_the_run_goes_on(settings_for: Callable[..., Settings],
                                                    colour_library: Path) -> None:
    (colour_library / "empty.jpg").write_bytes(b"")
    (colour_library / "page.jpg").write_bytes(b"<html>not a photo</html>")
    good = (colour_library / "red" / "red3.jpg").read_bytes()
    (colour_library / "truncated.jpg").write_bytes(good[: len(good) // 3])
    settings = settings_for()
    report, _ = run_index(settings, colour_library)
    assert report.indexed == 14 and report.failed == 3
    reasons = {Path(f["path"]).name: f["error"] for f in report.failures}
    assert reasons["empty.jpg"] == "file is empty"
    assert "not an image" in reasons["page.jpg"]
    assert "truncated" in reasons["truncated.jpg"]


def test_file_that_turns_corrupt_loses_its_old_vector(settings_for: Callable[..., Settings],
                                                     colour_library: Path) -> None:
    settings = settings_for()
    run_index(settings, colour_library)
    (colour_library / "red" / "red4.jpg").write_bytes(b"garbage")
    report, _ = run_index(settings, colour_library)
    assert report.failed == 1 and catalog_of(settings).count_images() == 13


def test_a_missing_root_wipes_nothing(settings_for: Callable[..., Settings], colour_library: Path) -> None:
    settings = settings_for()
    run_index(settings, colour_library)
    moved = colour_library.with_name("elsewhere")
    colour_library.rename(moved)
    with pytest.raises(RootError):
        run_index(settings, colour_library)
    assert catalog_of(settings).count_images() == 14


def test_model_change_requires_reindex(settings_for: Callable[..., Settings], colour_library: Path,
                                       tf2_module: Path) -> None:
    run_index(settings_for(), colour_library)
    other = settings_for(tf2_module)
    with pytest.raises(IndexMismatchError, match="--reindex"):
        run_index(other, colour_library)
    report, counter = run_index(other, colour_library, reindex=True)
    assert report.indexed == 14 and counter.embedded == 14
    assert catalog_of(other).model_ids() == {configured_model_id(other.model)}


def test_second_writer_is_refused(tmp_path: Path) -> None:
    with writer_lock(tmp_path):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            with writer_lock(tmp_path):
                pass
    with writer_lock(tmp_path):  # released after use
        pass


def test_small_commits_give_the_same_catalog(settings_for: Callable[..., Settings], colour_library: Path) -> None:
    settings = settings_for(model={"batch_size": 3}, indexer={"commit_every": 1, "decode_workers": 1})
    report, _ = run_index(settings, colour_library)
    assert report.indexed == 14
    cat = catalog_of(settings)
    assert cat.count_images() == cat.count_files() == 14


def test_duplicates_within_one_run_across_commits(settings_for: Callable[..., Settings], tmp_path: Path) -> None:
    root = tmp_path / "dups"
    for i in range(3):
        write_image(root / f"a{i}.png", colour_image(RED, seed=i))
        for j in range(3):
            shutil.copy(root / f"a{i}.png", root / f"a{i}-copy{j}.png")
    settings = settings_for(model={"batch_size": 4}, indexer={"commit_every": 1})
    report, counter = run_index(settings, root)
    assert (report.indexed, report.linked, report.failed) == (3, 9, 0) and counter.embedded == 3
    cat = catalog_of(settings)
    assert cat.count_images() == 3 and cat.count_files() == 12
