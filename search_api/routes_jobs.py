"""Index runs over HTTP: POST /api/v1/jobs/index starts one of indexer.roots, GET reports on them.

The run is a `lookalike index --job ID` child process of the worker that was asked (it ends with
that worker), writing its progress into `<data_dir>/jobs/ID.json` (indexer.index_jobs), which any
worker reads. One writer per data directory still holds: a second run is refused (409) while one
runs, and while a watcher keeps the library in step a run is not needed (503).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from indexer.index_jobs import jobs_dir, list_jobs, new_job, read_job, running_job
from indexer.watch_status import read_status
from search_api import schemas
from search_api.current import current_service
from search_api.openapi import operation
from search_api.problems import ApiProblem
from storage.lock import WRITER_LOCK, holder, watcher_pid

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")
activity_bp = Blueprint("activity", __name__, url_prefix="/api/v1")


@bp.post("/index")
@operation(summary="Start an index run of the configured library roots (indexer.roots) in the background; "
                   "202 with the job. 409 index_running while a run goes on, 503 watcher_running while a "
                   "watcher keeps the library in step, 409 no_roots when indexer.roots is empty",
           response=schemas.IndexJob, status=202, problems=(409, 503), tags=("jobs",))
def start_index() -> ResponseReturnValue:
    settings = current_service().settings
    data_dir = settings.storage.data_dir
    roots = [str(root) for root in settings.indexer.roots]
    if not roots:
        raise ApiProblem(409, "no library roots are configured: list them in indexer.roots", "no_roots")
    jobs_dir(data_dir).mkdir(parents=True, exist_ok=True)
    with _starting(data_dir):
        if (watcher := read_status(data_dir)) is not None:
            raise ApiProblem(503, f"a watcher (pid {watcher['pid']}) keeps the library in step: no index run is "
                             "needed", "watcher_running")
        running = running_job(data_dir)
        pid = holder(data_dir, WRITER_LOCK) or watcher_pid(data_dir)  # an index run holds both
        if running is not None or pid is not None:
            who = f"job {running['id']}" if running is not None else f"pid {pid}"
            raise ApiProblem(409, f"an index run ({who}) is writing to the data directory", "index_running")
        job_id = new_job(data_dir, roots)
        config = jobs_dir(data_dir) / f".{job_id}.yaml"  # this worker's settings, whatever their source
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", "--config", str(config), "index", "--job", job_id,
                                 "--parent-pid", str(os.getpid())], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        threading.Thread(target=_reap, args=(proc, config), name=f"index-job-{job_id}", daemon=True).start()
    job = read_job(data_dir, job_id) or {}
    return jsonify({**job, "pid": job.get("pid") or proc.pid}), 202


def _reap(proc: subprocess.Popen[bytes], config: Path) -> None:
    proc.wait()
    config.unlink(missing_ok=True)


class _starting:
    """One start at a time per data directory, across workers: checking and starting are one step."""

    def __init__(self, data_dir: Path) -> None:
        self.path = jobs_dir(data_dir) / ".start.lock"

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


@bp.get("/<job_id>")
@operation(summary="One index job: its state, files found/done/failed, images/s, ETA and, at the end, the run's "
                   "summary", response=schemas.IndexJob, problems=(404,), tags=("jobs",),
           path_params={"job_id": "The job's id, as POST /api/v1/jobs/index answered it."})
def get_job(job_id: str) -> ResponseReturnValue:
    job = read_job(current_service().settings.storage.data_dir, job_id)
    if job is None:
        raise ApiProblem(404, f"no index job {job_id!r}", "job_not_found")
    return jsonify(job)


@bp.get("")
@operation(summary="The last index jobs, newest first (kept across restarts)", response=schemas.IndexJobList,
           tags=("jobs",))
def get_jobs() -> ResponseReturnValue:
    return jsonify({"jobs": list_jobs(current_service().settings.storage.data_dir)})


@activity_bp.get("/activity")
@operation(summary="What is changing the library now: the running index job and the watcher, with the current "
                   "counts; the web page polls it to show progress", response=schemas.Activity, tags=("jobs",))
def get_activity() -> ResponseReturnValue:
    service = current_service()
    data_dir = service.settings.storage.data_dir
    images, vectors = service.counts()
    watcher = read_status(data_dir)
    totals = (watcher or {}).get("totals") or {}
    return jsonify({
        "images": images,
        "vectors": vectors,
        "job": running_job(data_dir),
        "watcher": None if watcher is None else {
            "roots": watcher.get("roots", []), "vanished": watcher.get("vanished", []),
            "waiting": watcher.get("waiting", 0), "lag_seconds": watcher.get("lag_seconds", 0.0),
            "indexed": totals.get("indexed", 0), "removed": totals.get("removed", 0),
        },
    })
