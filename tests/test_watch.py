"""The watcher with real folders and real file-system events (inotify through watchdog), in this process.

Each test starts a Watcher in a thread on tmp folders, changes the folders the way people and programs
do, and waits for the catalog to follow. (tests/test_watch_processes.py runs `lookalike watch` and
`serve --watch` as processes: signals, kill -9, the lock against index runs.)
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import BLUE, GREEN, RED, Counting, catalog_of, colour_image, encode, make_settings, sha256_of, wait_for

from indexer.model import configured_model_id
from indexer.settings import Settings
from indexer.watcher import Watcher

pytestmark = pytest.mark.slow  # each test waits on real file events and settle times

SETTLE = 0.6


def watch_settings(tmp_path: Path, tf1_module: Path, **indexer: object) -> Settings:
    return make_settings(tmp_path / "data", tf1_module, indexer={"decode_workers": 2, "commit_every": 4,
                                                                 "decode_in_processes": False,
                                                                 "settle_seconds": SETTLE, **indexer})


@contextmanager
def watching(settings: Settings, *roots: Path) -> Iterator[tuple[Watcher, Counting]]:
    """A watcher running in a thread until the block ends; its embedder counts the images it embeds."""
    counter = Counting(settings)
    watcher = Watcher(settings, [str(r) for r in roots], configured_model_id(settings.model),
                      counter)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            watcher.run()
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="watcher")
    thread.start()
    try:
        wait_for(lambda: watcher.batches >= 1 or failure or not thread.is_alive(), 60, "the first full scan")
        yield watcher, counter
    finally:
        watcher.request_stop()
        thread.join(30)
    assert not thread.is_alive(), "the watcher did not stop"
    assert not failure, failure


def files_in_catalog(settings: Settings) -> dict[str, str]:
    """path -> content hash of every file the catalog holds."""
    catalog = catalog_of(settings)
    try:
        images = catalog.get_images(list(range(1, catalog.max_image_id() + 1)))
        return {path: record.content_hash for record in images.values() for path in record.paths}
    finally:
        catalog.close()


def image_of(settings: Settings, path: Path) -> int | None:
    catalog = catalog_of(settings)
    try:
        return catalog.image_id_for_path(str(path))
    finally:
        catalog.close()


def until(settings: Settings, condition: Callable[[dict[str, str]], bool], what: str, seconds: float = 30) -> None:
    wait_for(lambda: condition(files_in_catalog(settings)), seconds, what)


def picture(colour: tuple[int, int, int], seed: int) -> bytes:
    return encode(colour_image(colour, seed=seed, accent=(seed * 7 % 256, 90, 30)), "PNG")


def test_create_modify_move_and_delete_follow_the_folder(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    root = tmp_path / "library"
    (root / "a").mkdir(parents=True)
    with watching(settings, root) as (_, counter):
        first = root / "a" / "one.png"
        first.write_bytes(picture(RED, 1))
        until(settings, lambda files: files.get(str(first)) == sha256_of(first), "a new file indexed")

        first.write_bytes(picture(BLUE, 2))  # rewritten in place
        until(settings, lambda files: files.get(str(first)) == sha256_of(first), "a changed file indexed again")
        embedded, image = counter.embedded, image_of(settings, first)

        moved = root / "b" / "renamed.png"
        moved.parent.mkdir()
        first.rename(moved)
        until(settings, lambda files: str(moved) in files and str(first) not in files, "a move followed")
        assert image_of(settings, moved) == image and counter.embedded == embedded  # re-pointed, not re-embedded

        moved.unlink()
        until(settings, lambda files: not files, "a deleted file removed")


def test_files_present_or_gone_at_start_are_caught_by_the_first_scan(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    root = tmp_path / "library"
    root.mkdir()
    for i in range(3):
        (root / f"p{i}.png").write_bytes(picture(GREEN, i))
    with watching(settings, root):
        until(settings, lambda files: len(files) == 3, "the files there at start")
    (root / "p0.png").unlink()  # while nobody watches
    with watching(settings, root):
        until(settings, lambda files: len(files) == 2, "a file deleted while not watching removed")


def test_a_bulk_copy_is_indexed_in_batches(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    source, root = tmp_path / "camera", tmp_path / "library"
    source.mkdir()
    root.mkdir()
    for i in range(60):
        (source / f"img{i:03d}.png").write_bytes(picture((i * 4, 255 - i * 4, 90), i))
    with watching(settings, root) as (watcher, counter):
        shutil.copytree(source, root / "import")
        until(settings, lambda files: len(files) == 60, "60 copied files indexed", 60)
        assert counter.embedded == 60
        assert watcher.batches < 40  # debounced into batches, not one per file
        assert files_in_catalog(settings) == {str(p): sha256_of(p) for p in (root / "import").iterdir()}


def test_a_file_written_slowly_waits_until_it_is_closed(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    root = tmp_path / "library"
    root.mkdir()
    data = picture(RED, 5) + b"\0" * 4096  # trailing bytes are ignored by PNG readers
    path = root / "slow.png"
    with watching(settings, root):
        with path.open("wb") as out:
            chunk = len(data) // 8
            for start in range(0, len(data), chunk):
                out.write(data[start:start + chunk])
                out.flush()
                time.sleep(SETTLE / 3)  # never still for settle_seconds
                assert str(path) not in files_in_catalog(settings)
        until(settings, lambda files: files.get(str(path)) == sha256_of(path), "the complete file indexed")


def test_a_file_still_written_is_taken_once_it_stays_unchanged(tmp_path: Path, tf1_module: Path) -> None:
    """A writer that never closes (or a file system without close events): size and mtime stable for settle_seconds."""
    settings = watch_settings(tmp_path, tf1_module)
    root = tmp_path / "library"
    root.mkdir()
    path = root / "open.png"
    with watching(settings, root), path.open("wb") as out:
        out.write(picture(BLUE, 6))
        out.flush()
        until(settings, lambda files: files.get(str(path)) == sha256_of(path), "a stable file indexed")


def test_a_move_between_roots_keeps_the_vector(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    path = one / "x.png"
    path.write_bytes(picture(GREEN, 9))
    with watching(settings, one, two) as (_, counter):
        until(settings, lambda files: str(path) in files, "the file indexed")
        embedded, image = counter.embedded, image_of(settings, path)
        target = two / "x.png"
        path.rename(target)
        until(settings, lambda files: set(files) == {str(target)}, "the move followed")
        assert image_of(settings, target) == image and counter.embedded == embedded


def test_a_root_renamed_away_removes_nothing_and_is_scanned_when_it_returns(tmp_path: Path,
                                                                           tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    root, away = tmp_path / "library", tmp_path / "elsewhere"
    root.mkdir()
    for i in range(3):
        (root / f"p{i}.png").write_bytes(picture(RED, 20 + i))
    with watching(settings, root) as (watcher, _):
        until(settings, lambda files: len(files) == 3, "the library indexed")
        before = files_in_catalog(settings)
        root.rename(away)
        wait_for(lambda: str(root) in watcher.vanished, 15, "the root reported missing")
        (away / "p0.png").unlink()
        (away / "new.png").write_bytes(picture(BLUE, 30))
        time.sleep(1)
        assert files_in_catalog(settings) == before  # nothing removed, nothing indexed at the wrong path
        away.rename(root)
        until(settings, lambda files: set(files) == {str(root / n) for n in ("p1.png", "p2.png", "new.png")},
              "the returned root scanned")
        assert str(root) not in watcher.vanished
        (root / "later.png").write_bytes(picture(GREEN, 31))
        until(settings, lambda files: str(root / "later.png") in files, "events followed again")


def test_an_unmounted_disk_leaves_an_empty_mount_point_that_removes_nothing(tmp_path: Path,
                                                                           tf1_module: Path) -> None:
    """Unmounting leaves another, empty folder at the root's path: no reason to forget its photos."""
    settings = watch_settings(tmp_path, tf1_module)
    root, disk = tmp_path / "mnt", tmp_path / "disk"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "p.png").write_bytes(picture(RED, 40))
    (root / "q.png").write_bytes(picture(BLUE, 41))
    with watching(settings, root) as (watcher, _):
        until(settings, lambda files: len(files) == 2, "the library indexed")
        root.rename(disk)
        root.mkdir()  # the mount point
        wait_for(lambda: str(root) in watcher.vanished, 15, "the root reported missing")
        time.sleep(1)
        assert len(files_in_catalog(settings)) == 2
        root.rmdir()
        disk.rename(root)  # mounted again
        wait_for(lambda: str(root) not in watcher.vanished, 15, "the root back")
        (root / "sub" / "p.png").unlink()
        until(settings, lambda files: set(files) == {str(root / "q.png")}, "events followed again")


def test_a_bind_mount_over_the_root_and_its_unmount(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    root, disk = tmp_path / "mnt", tmp_path / "disk"
    root.mkdir()
    disk.mkdir()
    (disk / "d.png").write_bytes(picture(GREEN, 50))
    if subprocess.run(["mount", "--bind", str(disk), str(root)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts need root (CAP_SYS_ADMIN)")
    try:
        with watching(settings, root) as (watcher, _):
            until(settings, lambda files: set(files) == {str(root / "d.png")}, "the mounted disk indexed")
            subprocess.run(["umount", str(root)], check=True)
            wait_for(lambda: str(root) in watcher.vanished, 15, "the unmounted root reported missing")
            time.sleep(1)
            assert set(files_in_catalog(settings)) == {str(root / "d.png")}
            subprocess.run(["mount", "--bind", str(disk), str(root)], check=True)
            wait_for(lambda: str(root) not in watcher.vanished, 15, "the root back")
            (root / "e.png").write_bytes(picture(RED, 51))
            until(settings, lambda files: set(files) == {str(root / "d.png"), str(root / "e.png")},
                  "events followed on the mounted disk again")
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


def metric(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_metrics_show_the_watcher(tmp_path: Path, tf1_module: Path) -> None:
    from search_api import create_app

    settings = watch_settings(tmp_path, tf1_module)
    root = tmp_path / "library"
    root.mkdir()
    (root / "first.png").write_bytes(picture(RED, 60))
    with watching(settings, root):
        until(settings, lambda files: len(files) == 1, "the first scan")
        (root / "second.png").write_bytes(picture(BLUE, 61))
        until(settings, lambda files: len(files) == 2, "a new file")
        client = create_app(settings).test_client()
        wait_for(lambda: metric(client.get("/metrics").get_data(as_text=True), "lookalike_watch_events_received")
                 > 0, 10, "the events counted")
        text = client.get("/metrics").get_data(as_text=True)
        assert metric(text, "lookalike_watch_running") == 1 and metric(text, "lookalike_watch_roots") == 1
        assert metric(text, "lookalike_watch_roots_missing") == 0
        assert metric(text, "lookalike_watch_files_settling") == 0
        assert metric(text, "lookalike_watch_index_lag_seconds") == 0
    assert metric(client.get("/metrics").get_data(as_text=True), "lookalike_watch_running") == 0


def test_a_root_missing_at_start_is_watched_once_it_appears(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    root = tmp_path / "later"
    with watching(settings, root) as (watcher, _):
        assert str(root) in watcher.vanished
        root.mkdir()
        wait_for(lambda: str(root) not in watcher.vanished, 15, "the new root noticed")
        (root / "p.png").write_bytes(picture(GREEN, 70))
        until(settings, lambda files: set(files) == {str(root / "p.png")}, "a file in the new root")


def test_a_root_without_events_is_polled(tmp_path: Path, tf1_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where inotify cannot watch (its watch limit reached, a network share), indexer.watch_poll_seconds polls."""
    import errno

    from watchdog.observers import Observer

    class NoInotify(Observer):  # type: ignore[misc,valid-type]
        def schedule(self, *args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr("indexer.watcher.Observer", NoInotify)
    settings = watch_settings(tmp_path, tf1_module, watch_poll_seconds=0.5)
    root = tmp_path / "share"
    root.mkdir()
    with watching(settings, root):
        path = root / "polled.png"
        path.write_bytes(picture(BLUE, 80))
        until(settings, lambda files: files.get(str(path)) == sha256_of(path), "a polled new file")
        moved = root / "moved.png"
        path.rename(moved)
        until(settings, lambda files: set(files) == {str(moved)}, "a polled move")
        moved.unlink()
        until(settings, lambda files: not files, "a polled deletion")


def test_a_folder_moved_or_deleted_whole(tmp_path: Path, tf1_module: Path) -> None:
    settings = watch_settings(tmp_path, tf1_module)
    root = tmp_path / "library"
    album = root / "2024" / "album"
    album.mkdir(parents=True)
    for i in range(3):
        (album / f"p{i}.png").write_bytes(picture(RED, 90 + i))
    with watching(settings, root) as (_, counter):
        until(settings, lambda files: len(files) == 3, "the album indexed")
        embedded = counter.embedded
        renamed = root / "trips" / "rome"
        renamed.parent.mkdir()
        album.rename(renamed)
        until(settings, lambda files: set(files) == {str(renamed / f"p{i}.png") for i in range(3)},
              "the moved folder followed")
        assert counter.embedded == embedded
        shutil.rmtree(root / "trips")
        until(settings, lambda files: not files, "the deleted folder removed")
