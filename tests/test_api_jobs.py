"""Index runs over HTTP: POST /api/v1/jobs/index, GET /api/v1/jobs/<id>, GET /api/v1/jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import assert_problem, run_index, wait_for

from indexer.index_jobs import JobProgress, new_job
from indexer.settings import Settings
from indexer.watch_status import remove_status, write_status
from search_api import create_app
from search_api.schemas import Activity, IndexJob, IndexJobList
from storage.lock import index_run_lock, watch_lock


def client_for(settings: Settings):  # type: ignore[no-untyped-def]
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


@pytest.mark.subprocess
def test_an_index_job_runs_in_the_background_and_reports_its_summary(settings_for: Callable[..., Settings],
                                                                    colour_library: Path) -> None:
    settings = settings_for(indexer={"roots": [str(colour_library)]})
    client = client_for(settings)
    started = client.post("/api/v1/jobs/index")
    assert started.status_code == 202, started.get_json()
    job = IndexJob.model_validate(started.get_json())
    assert job.state in ("queued", "running") and job.roots == [str(colour_library)]

    def state() -> str:
        return str(client.get(f"/api/v1/jobs/{job.id}").get_json()["state"])

    wait_for(lambda: state() not in ("queued", "running"), 180, "the job to end")
    done = IndexJob.model_validate(client.get(f"/api/v1/jobs/{job.id}").get_json())
    assert done.state == "done", done
    assert done.summary is not None and done.summary["indexed"] == 14 and done.summary["found"] == 14
    assert (done.found, done.total, done.done, done.indexed, done.failed) == (14, 14, 14, 14, 0)
    listed = IndexJobList.model_validate(client_for(settings).get("/api/v1/jobs").get_json())  # any worker
    assert [j.id for j in listed.jobs] == [job.id]
    assert client.get("/api/v1/stats").get_json()["images"] == 14


def test_a_job_is_refused_while_another_writer_or_a_watcher_runs(settings_for: Callable[..., Settings],
                                                                colour_library: Path) -> None:
    settings = settings_for(indexer={"roots": [str(colour_library)]})
    client = client_for(settings)
    data = settings.storage.data_dir
    with index_run_lock(data):
        assert_problem(client.post("/api/v1/jobs/index"), 409, "index_running")
    with watch_lock(data):
        write_status(data, {"roots": [str(colour_library)]})  # what a watcher writes once it holds the lock
        assert_problem(client.post("/api/v1/jobs/index"), 503, "watcher_running", "watcher")
        remove_status(data)
    assert client.get("/api/v1/jobs").get_json() == {"jobs": []}
    assert_problem(client.get("/api/v1/jobs/20260101T000000-abcdef"), 404, "job_not_found")
    assert client.get("/api/v1/jobs/..%2Fsecrets").status_code == 404
    assert_problem(client.get("/api/v1/jobs/..secrets"), 404, "job_not_found")


def test_a_job_needs_configured_roots(settings_for: Callable[..., Settings]) -> None:
    assert_problem(client_for(settings_for()).post("/api/v1/jobs/index"), 409, "no_roots", "indexer.roots")


def test_activity_reports_the_running_job_the_watcher_and_the_counts(settings_for: Callable[..., Settings],
                                                                     colour_library: Path) -> None:
    settings = settings_for(indexer={"roots": [str(colour_library)]})
    client = client_for(settings)
    data = settings.storage.data_dir
    idle = Activity.model_validate(client.get("/api/v1/activity").get_json())
    assert (idle.images, idle.vectors, idle.job, idle.watcher) == (0, 0, None, None)

    progress = JobProgress(data, new_job(data, [str(colour_library)]))  # as `lookalike index --job` writes it
    progress.start(total=10, found=12)
    for _ in range(10):  # progress is written at most once a second, and at the last file
        progress.advance("indexed")
    running = Activity.model_validate(client.get("/api/v1/activity").get_json())
    assert running.job is not None and (running.job.state, running.job.done, running.job.total) == ("running", 10, 10)
    progress.finish({"indexed": 10})
    assert client.get("/api/v1/activity").get_json()["job"] is None

    run_index(settings, colour_library)
    with watch_lock(data):
        write_status(data, {"roots": [str(colour_library)], "vanished": [], "waiting": 2, "lag_seconds": 1.5,
                            "totals": {"indexed": 3, "removed": 1}})
        watched = Activity.model_validate(client.get("/api/v1/activity").get_json())
        remove_status(data)
    assert (watched.images, watched.vectors) == (14, 14)
    assert watched.watcher is not None
    assert (watched.watcher.roots, watched.watcher.waiting, watched.watcher.indexed, watched.watcher.removed) == (
        [str(colour_library)], 2, 3, 1)
    assert client.get("/api/v1/activity").get_json()["watcher"] is None
