"""Index runs started over HTTP (POST /api/v1/jobs/index): one JSON file per job in `<data_dir>/jobs/`.

The run itself is a `lookalike index --job ID` process; it writes its progress (files found, done,
failed, images/s, ETA) into its job file about twice a second, and its summary (the fields of
`lookalike index --json`) at the end. Any server worker reads the files, so it does not matter which
worker started the job, and a restarted server still reports the last runs. A job whose process
ended without a summary (killed, or its server stopped) reads as failed; running the index again
resumes where it stopped, as after any interrupted run.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

JOBS_DIR = "jobs"
KEEP_JOBS = 50  # older job files are removed when a new job starts
WRITE_EVERY_SECONDS = 0.5
RUNNING = ("queued", "running")


def jobs_dir(data_dir: Path) -> Path:
    return data_dir / JOBS_DIR


def new_job(data_dir: Path, roots: Sequence[str]) -> str:
    """Create a queued job for an index run of `roots`; its id."""
    folder = jobs_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    job_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    JobFile(data_dir, job_id).write(id=job_id, kind="index", state="queued", roots=list(roots),
                                    created_at=time.time(), started_at=None, finished_at=None, pid=None,
                                    found=0, total=0, done=0, indexed=0, linked=0, failed=0,
                                    images_per_second=0.0, eta_seconds=None, summary=None, error=None)
    for old in sorted(folder.glob("*.json"))[:-KEEP_JOBS]:
        old.unlink(missing_ok=True)
    return job_id


class JobFile:
    """One job's file, replaced atomically at every write."""

    def __init__(self, data_dir: Path, job_id: str) -> None:
        if not job_id.replace("-", "").isalnum():
            raise ValueError(f"not a job id: {job_id!r}")
        self.path = jobs_dir(data_dir) / f"{job_id}.json"
        self.fields: dict[str, Any] = {}

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, **fields: Any) -> None:
        if not self.fields:
            self.fields = self.read() or {}
        self.fields.update(fields)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(self.fields), encoding="utf-8")
        os.replace(temp, self.path)


class JobProgress:
    """An index run's Progress (indexer.report) written into its job file."""

    def __init__(self, data_dir: Path, job_id: str) -> None:
        self.file = JobFile(data_dir, job_id)
        self.counts = {"indexed": 0, "linked": 0, "failed": 0}
        self.total = self.done = 0
        self.started = self.written = 0.0
        self.file.write(state="running", pid=os.getpid(), started_at=time.time())

    def start(self, total: int, found: int = 0) -> None:
        self.total, self.done = total, 0
        self.counts = dict.fromkeys(self.counts, 0)
        self.started = time.monotonic()
        self.file.write(found=found, total=total, done=0, **self.counts)

    def advance(self, outcome: str) -> None:
        self.done += 1
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        now = time.monotonic()
        if now - self.written >= WRITE_EVERY_SECONDS or self.done == self.total:
            self.written = now
            elapsed = max(now - self.started, 1e-6)
            rate = self.done / elapsed
            self.file.write(done=self.done, **self.counts, images_per_second=round(self.counts["indexed"] / elapsed, 2),
                            eta_seconds=round((self.total - self.done) / rate, 1) if rate else None)

    def finish(self, summary: dict[str, Any]) -> None:
        self.file.write(state="interrupted" if summary.get("interrupted") else "done", finished_at=time.time(),
                        summary=summary, eta_seconds=0, images_per_second=summary.get("images_per_second", 0.0))

    def fail(self, error: str) -> None:
        self.file.write(state="failed", finished_at=time.time(), error=error, eta_seconds=None)


def _settled(job: dict[str, Any]) -> dict[str, Any]:
    """A job as it stands: one still 'running' whose process is gone ended without a summary."""
    if job.get("state") in RUNNING:
        pid = job.get("pid")
        created = float(job.get("created_at") or 0)
        gone = (pid is None and time.time() - created > 120) or (pid is not None and not _alive(int(pid)))
        if gone:
            job = {**job, "state": "failed",
                   "error": "the run ended without a summary (stopped or killed); index again to resume"}
    return job


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: alive as far as we can tell


def read_job(data_dir: Path, job_id: str) -> dict[str, Any] | None:
    try:
        job = JobFile(data_dir, job_id).read()
    except ValueError:
        return None
    return None if job is None else _settled(job)


def list_jobs(data_dir: Path) -> list[dict[str, Any]]:
    """Every job kept, newest first."""
    out = []
    for path in sorted(jobs_dir(data_dir).glob("*.json"), reverse=True):
        job = read_job(data_dir, path.stem)
        if job is not None:
            out.append(job)
    return out


def running_job(data_dir: Path) -> dict[str, Any] | None:
    return next((job for job in list_jobs(data_dir) if job.get("state") in RUNNING), None)
