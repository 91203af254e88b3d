"""File-system events turned into settled changes: what a watcher's next batch holds.

watchdog's observer threads hand every event to `ChangeQueue.handle`. A file being written is not
handed on until it is complete: its close-after-writing event arrived, or its size and modification
time have not changed for `settle_seconds` (file systems and writers that send no close event, and
the polling observer). Moves and deletions are handed on at once; so are folders that moved or went
(every file under them is checked). A folder that appears is scanned for files, which then settle
like any other. Hidden paths and files that are no images are ignored, as a scan ignores them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from indexer.scan import scan
from indexer.watch_plan import Changes, is_hidden, is_image_name, root_of

# The events a watcher asks for (the inotify mask follows: no open or read-only close events, which
# the indexer's own reads would cause).
EVENT_TYPES = [FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileMovedEvent,
               FileDeletedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent]
# Moves and deletions wait this long at most for files still being written: a file moved from one root to
# another arrives as a deletion and a creation, and the new path must be linked before the old one is
# forgotten, or its image would leave the catalog and be embedded again.
HOLD_SECONDS = 5.0


@dataclass
class _Writing:
    """A file written to lately, waiting to be complete."""

    since: float  # when its first change not yet indexed arrived
    closed: bool = False
    seen: tuple[int, int] | None = None  # size and mtime at the last look
    stable_since: float = 0.0


def _text(path: bytes | str) -> str:
    return os.fsdecode(path)


class ChangeQueue(FileSystemEventHandler):
    """Collects events from observer threads; `take` hands the settled ones to the watcher's loop."""

    def __init__(self, roots: Sequence[str], settle_seconds: float) -> None:
        self.roots = list(roots)
        self.settle_seconds = settle_seconds
        self.events = 0  # received, for /metrics and the logs
        self.last_event = 0.0  # monotonic time of the last event that mattered
        self._lock = threading.Lock()
        self._writing: dict[str, _Writing] = {}
        self._ready = Changes()
        self._ready_since: float | None = None
        self._new_folders: set[str] = set()

    # --- observer threads -------------------------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        now = time.monotonic()
        src, dest = _text(event.src_path), _text(getattr(event, "dest_path", "") or "")
        with self._lock:
            self.events += 1
            if isinstance(event, DirMovedEvent):
                self._ready_folder(src, now)
                self._ready_folder(dest, now)
            elif isinstance(event, DirDeletedEvent):
                self._ready_folder(src, now)
            elif isinstance(event, DirCreatedEvent):
                if self._wanted(src, folder=True):
                    self._new_folders.add(src)
                    self.last_event = now
            elif isinstance(event, (FileMovedEvent, FileDeletedEvent)):
                for path in (src, dest):
                    if path and self._wanted(path):
                        self._writing.pop(path, None)
                        self._ready_file(path, now)
            elif isinstance(event, FileAttribEvent):  # a new mtime (cp -p sets it after closing)
                if self._wanted(src):
                    writing = self._writing.get(src)
                    if writing is not None:
                        writing.seen = None
                    else:
                        self._writing[src] = _Writing(now, closed=True)
                    self.last_event = now
            elif isinstance(event, FileClosedEvent):
                if self._wanted(src):
                    writing = self._writing.setdefault(src, _Writing(now))
                    writing.closed = True
                    self.last_event = now
            elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)) and self._wanted(src):
                writing = self._writing.setdefault(src, _Writing(now))
                writing.closed, writing.seen = False, None
                self.last_event = now

    def _wanted(self, path: str, folder: bool = False) -> bool:
        root = root_of(path, self.roots)
        return root is not None and path != root and not is_hidden(path, root) and (folder or is_image_name(path))

    def _ready_file(self, path: str, now: float) -> None:
        self._ready.files.add(path)
        self._ready_since = self._ready_since or now
        self.last_event = now

    def _ready_folder(self, path: str, now: float) -> None:
        if self._wanted(path, folder=True):
            self._writing = {p: w for p, w in self._writing.items() if not p.startswith(path + os.sep)}
            self._ready.folders.add(path)
            self._ready_since = self._ready_since or now
            self.last_event = now

    # --- the watcher's loop -------------------------------------------------------------------

    def add_folder(self, folder: str) -> None:
        """Have every image file under `folder` settle and be checked (a root that came back)."""
        with self._lock:
            self._new_folders.add(folder)

    def take(self) -> Changes:
        """The changes that are settled now, removed from the queue."""
        now = time.monotonic()
        self._look_into_new_folders(now)
        with self._lock:
            writing = dict(self._writing)
        settled = [path for path, w in writing.items() if self._settled(path, w, now)]
        out = Changes()
        with self._lock:
            for path in settled:
                if self._writing.get(path) is writing[path]:
                    del self._writing[path]
                    out.files.add(path)
            hold = self._ready_since is not None and now - self._ready_since < self.settle_seconds + HOLD_SECONDS
            if not (self._writing and hold):
                out.update(self._ready)
                self._ready, self._ready_since = Changes(), None
        return out

    def _settled(self, path: str, w: _Writing, now: float) -> bool:
        """Whether a file written to is complete: closed after writing, gone, or unchanged for settle_seconds."""
        if w.closed:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return True  # gone (or unreadable): the batch finds out which, and acts only on the first
        seen = (st.st_size, st.st_mtime_ns)
        if seen != w.seen:
            w.seen, w.stable_since = seen, now
            return False
        return now - w.stable_since >= self.settle_seconds

    def _look_into_new_folders(self, now: float) -> None:
        """Files in a folder that appeared (moved in, copied in, or a root that came back) settle like others."""
        with self._lock:
            folders, self._new_folders = self._new_folders, set()
        for folder in sorted(folders):
            root = root_of(folder, self.roots)
            if root is None:
                continue
            for found in scan(Path(root), start=Path(folder)):
                with self._lock:
                    self._writing.setdefault(found.path, _Writing(now))

    def waiting(self) -> int:
        """Files waiting to settle."""
        with self._lock:
            return len(self._writing)

    def oldest_change(self) -> float | None:
        """Monotonic time of the oldest change not handed on yet (for the index lag), or None."""
        with self._lock:
            times = [w.since for w in self._writing.values()]
            if self._ready_since is not None:
                times.append(self._ready_since)
        return min(times) if times else None

    def pending(self) -> bool:
        with self._lock:
            return bool(self._writing or self._ready or self._new_folders)
