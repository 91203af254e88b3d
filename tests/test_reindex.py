"""`index --reindex` builds the new model's vectors beside the current ones and switches atomically.

Servers answer from the current vectors the whole time (never an empty answer), a stop or a
kill leaves the current model serving, the next `--reindex` resumes without embedding twice,
and images that cannot be read again are reported, never silently dropped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from helpers import (
    POSTGRES_URL,
    REPO,
    Counting,
    Library,
    assert_problem,
    catalog_of,
    colour_image,
    drop_everything,
    env_for,
    make_settings,
    postgres_answers,
    run_index,
    search,
    wait_for,
    write_image,
)

from indexer.model import configured_model_id
from indexer.pipeline import IndexReport, LibraryIndexer
from indexer.scan import RootError
from indexer.settings import Settings
from lookalike.cli import cli
from search_api import create_app
from search_api.current import service_of
from storage import staging
from storage.faults import AFTER_ENV, POINT_ENV
from storage.vector_index import IndexMismatchError, IndexStore
from storage.verify import verify

TUNING = {"model": {"batch_size": 4}, "indexer": {"commit_every": 4, "decode_workers": 2}}


def mid(settings: Settings) -> str:
    return configured_model_id(settings.model)


def manifest_model(settings: Settings) -> str | None:
    manifest = IndexStore(settings.storage.data_dir / "index").manifest()
    return manifest.model_id if manifest else None


def assert_verified(settings: Settings) -> None:
    catalog = catalog_of(settings)
    try:
        report = verify(catalog, IndexStore(settings.storage.data_dir / "index"), mid(settings))
        assert report.ok, report.problems
        assert catalog.model_ids() == {mid(settings)} and staging.staged_count(catalog) == 0
    finally:
        catalog.close()


def similar_answers(client: FlaskClient, image_id: int) -> list[int]:
    response = client.get(f"/api/v1/images/{image_id}/similar?k=3")
    assert response.status_code == 200, response.get_data(as_text=True)
    return [hit["id"] for hit in response.get_json()["results"]]


def query_during(client: FlaskClient, ids: list[int], upload: bytes, running: Callable[[], bool]) -> Counter[str]:
    """Alternate similar-by-id and search-by-upload queries while `running()`; count each kind of answer."""
    outcomes: Counter[str] = Counter()
    turn = 0
    while running():
        turn += 1
        if turn % 2:
            response = client.get(f"/api/v1/images/{ids[turn % len(ids)]}/similar?k=3")
        else:
            response = search(client, upload, "?k=3")
        if response.status_code == 200:
            outcomes["answered" if response.get_json()["results"] else "EMPTY"] += 1
        else:
            outcomes[f"{response.status_code} {response.get_json(force=True).get('code')}"] += 1
    return outcomes


def reindex_in_thread(settings: Settings, root: Path) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["report"] = run_index(settings, root, reindex=True)[0]
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=work, name="reindex")
    thread.start()
    return thread, result


@pytest.fixture
def library(tmp_path: Path) -> Library:
    library = Library(tmp_path / "library", seed=5)
    library.add(160)
    return library


@pytest.mark.slow
def test_no_empty_answer_during_a_reindex(tmp_path: Path, tf1_module: Path, tf2_module: Path,
                                          library: Library) -> None:
    data = tmp_path / "data"
    old, new = make_settings(data, tf1_module, **TUNING), make_settings(data, tf2_module, **TUNING)
    assert run_index(old, library.root)[0].indexed == 160
    upload = library.files()[0].read_bytes()
    ids = list(range(1, 161))

    # The same model again (a forced refresh): every answer comes from a complete index, before and after.
    app = create_app(old)
    client = app.test_client()
    thread, result = reindex_in_thread(old, library.root)
    same_model = query_during(client, ids, upload, thread.is_alive)
    thread.join()
    assert "error" not in result, result
    print(f"\nsame-model reindex: {dict(same_model)}")
    assert same_model["EMPTY"] == 0 and set(same_model) == {"answered"} and same_model["answered"] >= 20
    assert_verified(old)

    # Another model: a server still running the old one answers from the old vectors until the switch,
    # then says it must be restarted with the new model; never an empty list.
    thread, result = reindex_in_thread(new, library.root)
    changed = query_during(client, ids, upload, thread.is_alive)
    thread.join()
    assert "error" not in result, result
    report = result["report"]
    assert isinstance(report, IndexReport) and report.reindexed == 160 and report.not_reindexed == 0
    print(f"model-change reindex, server on the old model: {dict(changed)}")
    assert changed["EMPTY"] == 0 and changed["answered"] >= 20
    assert set(changed) <= {"answered", "503 model_mismatch"}, changed
    wait_for(lambda: client.get("/readyz").status_code == 503, 5, "the server to notice the switch")
    assert_problem(client.get("/readyz"), 503, "model_mismatch", "restart")
    assert_verified(new)
    restarted = create_app(new).test_client()
    assert len(similar_answers(restarted, 7)) == 3
    assert search(restarted, upload, "?k=1").get_json()["results"][0]["score"] > 0.999


class StopAfter:
    """A progress receiver that asks the indexer to stop after `count` images are embedded."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.indexer: LibraryIndexer | None = None

    def start(self, total: int, found: int = 0) -> None:
        pass

    def advance(self, outcome: str) -> None:
        self.seen += outcome == "indexed"
        if self.seen == self.count and self.indexer is not None:
            self.indexer.request_stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Storage settings for a catalog in SQLite (in the data dir) or in the tests' PostgreSQL database."""
    if request.param == "sqlite":
        yield {}
        return
    if not postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_URL}")
    drop_everything(POSTGRES_URL)
    yield {"database_url": POSTGRES_URL}
    drop_everything(POSTGRES_URL)


def test_a_stopped_reindex_keeps_the_old_model_serving_and_resumes(tmp_path: Path, tf1_module: Path,
                                                                   tf2_module: Path, database: dict[str, str]) -> None:
    library = Library(tmp_path / "library", seed=9)
    library.add(40)
    data = tmp_path / "data"
    old = make_settings(data, tf1_module, **TUNING, storage=database)
    new = make_settings(data, tf2_module, **TUNING, storage=database)
    run_index(old, library.root)
    before = similar_answers(create_app(old).test_client(), 5)

    stopper = StopAfter(12)
    catalog = catalog_of(new)
    try:
        stopper.indexer = LibraryIndexer(new, catalog, IndexStore(data / "index"), mid(new), Counting(new),
                                         progress=stopper)
        report = stopper.indexer.run([str(library.root)], reindex=True)
        assert report.interrupted and report.reindexed == 12
        assert staging.staged_count(catalog, mid(new)) == 12
        assert catalog.model_ids() == {mid(old)} and manifest_model(new) == mid(old)
    finally:
        catalog.close()

    # The old model answers exactly as before; a server of the new model says a reindex is under way.
    assert similar_answers(create_app(old).test_client(), 5) == before
    new_app = create_app(new)
    service_of(new_app).warm_up()  # a server boots, and says why it is not ready
    new_server = new_app.test_client()
    assert_problem(new_server.get("/readyz"), 503, "model_mismatch", "reindex to model")
    with pytest.raises(IndexMismatchError, match=r"in progress: 12 of 40 .*lookalike index --reindex"):
        run_index(new, library.root)
    env = env_for(data, tf2_module) | {f"LOOKALIKE_STORAGE__{k.upper()}": v for k, v in database.items()}
    plain = CliRunner().invoke(cli, ["index", str(library.root)], env=env)
    assert plain.exit_code == 1 and "reindex to model" in plain.output and "--reindex" in plain.output

    report, counter = run_index(new, library.root, reindex=True)
    assert counter.embedded == 28 and report.reindexed == 28 and report.reindex_resumed == 12
    assert_verified(new)
    assert len(similar_answers(new_server, 5)) == 3


def test_images_that_cannot_be_read_again_are_reported_not_dropped(tmp_path: Path, tf1_module: Path,
                                                                   tf2_module: Path) -> None:
    library = Library(tmp_path / "library", seed=4)
    library.add(12)
    big = write_image(library.root / "big" / "large.png", colour_image((90, 120, 200), size=(300, 300), seed=3))
    data = tmp_path / "data"
    old = make_settings(data, tf1_module, **TUNING)
    # The new settings refuse images over 200x200 pixels: the large one cannot be embedded again.
    new = make_settings(data, tf2_module, model=TUNING["model"],
                        indexer={**TUNING["indexer"], "max_image_pixels": 40_000})
    run_index(old, library.root)
    changed, gone = [p for p in library.files() if p != big][:2]
    changed.unlink()
    write_image(changed.with_suffix(".png"), colour_image((10, 250, 10), seed=77)).rename(changed)
    gone.unlink()

    report, _ = run_index(new, library.root, reindex=True)
    assert report.not_reindexed == 3 and report.reindexed == 10
    not_reindexed = {f["path"]: f["error"] for f in report.failures if f["kind"] == "not_reindexed"}
    assert set(not_reindexed) == {str(changed), str(gone), str(big)}
    assert "changed since it was indexed" in not_reindexed[str(changed)]
    assert "no longer there" in not_reindexed[str(gone)] and "pixels" in not_reindexed[str(big)]
    # The same run's normal pass: the changed file is embedded as new content, the gone one removed,
    # and the large one rejected, so `lookalike errors` lists it.
    assert report.indexed == 11 and report.removed == 1
    catalog = catalog_of(new)
    try:
        assert catalog.image_id_for_path(str(changed)) is not None
        assert catalog.image_id_for_path(str(big)) is None and catalog.count_images() == 11
        assert [(r.path, r.kind) for r in catalog.rejections()] == [(str(big), "too_many_pixels")]
    finally:
        catalog.close()
    listed = CliRunner().invoke(cli, ["errors"], env=env_for(data, tf2_module))
    assert str(big) in listed.output
    assert_verified(new)


def test_a_reindex_does_not_drop_a_folder_whose_drive_is_gone(tmp_path: Path, tf1_module: Path,
                                                              tf2_module: Path) -> None:
    here, away = Library(tmp_path / "here", seed=1), Library(tmp_path / "usb", seed=2)
    here.add(6)
    away.add(5)
    data = tmp_path / "data"
    old, new = make_settings(data, tf1_module, **TUNING), make_settings(data, tf2_module, **TUNING)
    run_index(old, here.root, away.root)
    away.root.rename(tmp_path / "unplugged")

    with pytest.raises(RootError, match=r"5 images .*usb is missing or empty .*Nothing was switched"):
        run_index(new, here.root, reindex=True)
    catalog = catalog_of(old)
    try:
        assert catalog.model_ids() == {mid(old)} and catalog.count_images() == 11
        assert staging.staged_count(catalog, mid(new)) == 6
    finally:
        catalog.close()
    assert manifest_model(old) == mid(old)

    (tmp_path / "unplugged").rename(away.root)
    report, counter = run_index(new, here.root, reindex=True)
    assert report.reindexed == counter.embedded == 5 and report.reindex_resumed == 6
    assert_verified(new)


def start_reindex(data: Path, module: Path, root: Path, log: Path, point: str, after: int) -> int:
    env = {**os.environ, **env_for(data, module), "PYTHONPATH": str(REPO), POINT_ENV: point, AFTER_ENV: str(after),
           "LOOKALIKE_MODEL__BATCH_SIZE": "4", "LOOKALIKE_INDEXER__COMMIT_EVERY": "4",
           "LOOKALIKE_INDEXER__DECODE_WORKERS": "2"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", "index", "--reindex", str(root)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        return proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.subprocess
@pytest.mark.parametrize(("point", "after"), [("reindex-staged", 3), ("reindex-swapped", 1)])
def test_kill_9_during_a_reindex(tmp_path: Path, tf1_module: Path, tf2_module: Path, point: str,
                                 after: int) -> None:
    library = Library(tmp_path / "library", seed=6)
    library.add(40)
    data = tmp_path / "data"
    old, new = make_settings(data, tf1_module, **TUNING), make_settings(data, tf2_module, **TUNING)
    run_index(old, library.root)
    before = similar_answers(create_app(old).test_client(), 3)

    log = tmp_path / "killed.log"
    code = start_reindex(data, tf2_module, library.root, log, point, after)
    assert code == -signal.SIGKILL and f"fault point {point}" in log.read_text(errors="replace"), log.read_text()
    runner = CliRunner()
    if point == "reindex-staged":  # killed while staging: the old model still answers, exactly as before
        catalog = catalog_of(old)
        try:
            staged = staging.staged_count(catalog, mid(new))
            assert staged == 12 and catalog.model_ids() == {mid(old)}
        finally:
            catalog.close()
        assert manifest_model(old) == mid(old)
        assert similar_answers(create_app(old).test_client(), 3) == before
        resumed = runner.invoke(cli, ["index", "--reindex", "--json", str(library.root)], env=env_for(data, tf2_module))
        assert resumed.exit_code == 0, resumed.output
        assert '"reindexed": 28' in resumed.output and '"reindex_resumed": 12' in resumed.output
    else:  # killed after the catalog switched, before the new generation was named: the next run repairs it
        assert manifest_model(old) == mid(old)
        repaired = runner.invoke(cli, ["index", "--json", str(library.root)], env=env_for(data, tf2_module))
        assert repaired.exit_code == 0 and '"indexed": 0' in repaired.output, repaired.output
    checked = runner.invoke(cli, ["verify"], env=env_for(data, tf2_module))
    assert checked.exit_code == 0 and checked.output.strip().endswith("ok"), checked.output
    assert_verified(new)
    assert len(similar_answers(create_app(new).test_client(), 3)) == 3
