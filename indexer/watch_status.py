"""What a running watcher is doing, in `<data_dir>/watch-status.json`: for /metrics and the API.

The watcher is another process than the servers (`lookalike watch`, or the child of `serve --watch`),
so it writes its status to a small file (replaced atomically about once a second) that any server
process reads. A status is only believed while its writer holds the watch lock: a watcher that died
leaves its last file behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from storage.lock import watcher_pid

log = logging.getLogger(__name__)

STATUS_FILE = "watch-status.json"


def write_status(data_dir: Path, status: dict[str, Any]) -> None:
    """Replace the status file; a failure (a full disk) is logged once in a while, never raised."""
    path = data_dir / STATUS_FILE
    temp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps({**status, "pid": os.getpid(), "written_at": time.time()}), encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The running watcher's status (lag brought up to now), or None when no watcher runs (a watcher writes
    its first status as soon as it holds the watch lock)."""
    pid = watcher_pid(data_dir)
    if pid is None:
        return None
    try:
        status = json.loads((data_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or str(status.get("pid")) != pid:
        return None  # the watch lock is held by an index run (see storage.lock.index_run_lock)
    if status.get("lag_seconds"):
        status["lag_seconds"] = round(status["lag_seconds"] + max(0.0, time.time() - status["written_at"]), 3)
    return status


def remove_status(data_dir: Path) -> None:
    """A watcher that stops takes its status with it."""
    try:
        (data_dir / STATUS_FILE).unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot remove %s: %s", data_dir / STATUS_FILE, exc)
