"""Keep the catalog in step with the library as it changes: `lookalike watch` and `serve --watch`.

    full scan at start -> events (inotify; polling for network shares) -> settled changes (watch_events)
    -> debounced batches -> plan_changes (watch_plan) -> the index runner's commits -> the catalog

The watcher holds the data directory's watch lock while it runs (an index run started by hand is
refused meanwhile) and the writer lock for each batch it commits, so that uploads and other writers
get their turn between batches. It commits rows: servers follow the catalog's tail between index
generations (storage.live_index), and the watcher publishes a generation now and then (when nothing
is published yet, after `TAIL_PUBLISH` new images, every publish_every_seconds, after a full scan,
and when it stops). A root that vanishes removes nothing; it is watched for and scanned again when
it returns. Every rescan_hours a full scan catches what no event reported.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from indexer.catalog_writer import CatalogWriter
from indexer.local_source import LocalSource
from indexer.model import Embedder
from indexer.plan import Plan, plan_run, record_scan_problems
from indexer.prepare import Prepared
from indexer.report import IndexReport
from indexer.runner import IndexRunner
from indexer.scan import RootError
from indexer.settings import Settings
from indexer.watch_events import EVENT_TYPES, ChangeQueue
from indexer.watch_plan import Changes, plan_changes, root_identity, root_present
from indexer.watch_status import remove_status, write_status
from storage.catalog import Catalog
from storage.lock import LockedError, watch_lock, writer_lock
from storage.paths import printable
from storage.sync import check_model
from storage.vector_index import IndexStore

log = logging.getLogger(__name__)

# watchdog's inotify emitter re-adds the watch of a folder moved within the tree and says so; nothing is lost.
warnings.filterwarnings("ignore", message="Callback with id .* already exists", category=RuntimeWarning,
                        module="watchdog")

TICK_SECONDS = 0.2
DEBOUNCE_SECONDS = 0.5  # a batch starts once events have been quiet this long...
MAX_DELAY_SECONDS = 2.0  # ...or once its oldest change waited this long (a bulk copy still going on)
ROOT_CHECK_SECONDS = 2.0
CHUNK_FILES = 1024  # candidates committed per hold of the writer lock
TAIL_PUBLISH = 10_000  # images added since the last generation that make the watcher publish one
LOCK_POLL_SECONDS = 1.0
FALLBACK_POLL_SECONDS = 60.0  # polling interval for a root that events cannot be had for
FINAL_LOCK_WAIT_SECONDS = 5.0
STATUS_SECONDS = 1.0  # how often watch-status.json is written (and after every batch)


class Stopped(Exception):
    """A stop was requested while waiting for the writer lock."""


def library_root(path: str | Path) -> str:
    """A root as the catalog names it: absolute, symbolic links resolved (it may be missing right now)."""
    return str(Path(path).expanduser().resolve())


class Watcher:
    """Watches library roots and commits their changes; `run` until `request_stop` (safe from a signal handler)."""

    def __init__(self, settings: Settings, roots: Sequence[str | Path], model_id: str,
                 load_embedder: Callable[[], Embedder]) -> None:
        self.settings = settings
        self.roots = sorted({library_root(r) for r in roots})
        self.data_dir = settings.storage.data_dir
        self.model_id = model_id
        self.load_embedder = load_embedder
        self.stop = threading.Event()
        self.queue = ChangeQueue(self.roots, settings.indexer.settle_seconds)
        self.vanished: set[str] = set()
        self.totals = IndexReport()  # everything done since the start
        self.batches = 0
        self.last_batch: dict[str, Any] = {}
        self._runner: IndexRunner[Prepared] | None = None
        self._observers: list[Any] = []
        self._watches: dict[str, list[tuple[Any, Any]]] = {}  # root -> (observer, watch)
        self._state: tuple[int | None, int, int] | None = None  # the catalog and index as this watcher left them
        self._identity: dict[str, tuple[int, int] | None] = {}  # root -> its folder's device and inode

    def request_stop(self) -> None:
        self.stop.set()
        if self._runner is not None:
            self._runner.request_stop()

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> None:
        """Watch until a stop is requested. Raises LockedError when another watcher keeps the data directory."""
        with watch_lock(self.data_dir), ExitStack() as stack:
            write_status(self.data_dir, {"roots": self.roots, "starting": True})
            stack.callback(remove_status, self.data_dir)
            self.catalog = Catalog(self.settings.storage.resolved_database_url())
            stack.callback(self.catalog.close)
            self.store = IndexStore(self.data_dir / "index")
            check_model(self.catalog, self.model_id)
            self.source = LocalSource(self.settings, self.model_id, self.load_embedder)
            self.writer = CatalogWriter.from_settings(self.settings, self.catalog, self.store, self.model_id,
                                                      merge_known_content=True)
            self._runner = IndexRunner(self.catalog, self.source, self.writer,
                                       commit_every=self.settings.indexer.commit_every)
            if self.stop.is_set():
                self._runner.request_stop()
            self.source.open()
            stack.callback(lambda: self.source.close(stop_workers=True))
            stack.callback(self._stop_observers)
            try:
                with self._writing():
                    self.writer.open()
                self._start_observers()
                self._full_scan(self.roots)
                if not self.stop.is_set():
                    _ = self.source.embedder  # loaded now: the first new photo should not wait for it
                self._loop()
            except Stopped:
                pass
            self._final_publish()
        log.info("watcher stopped: %s", self._summary(self.totals))

    def _loop(self) -> None:
        indexer = self.settings.indexer
        rescan_every = indexer.rescan_hours * 3600
        next_rescan = time.monotonic() + rescan_every if rescan_every else None
        next_root_check = time.monotonic() + ROOT_CHECK_SECONDS
        log.info("watching %d root(s): %s", len(self.roots), ", ".join(printable(r) for r in self.roots))
        next_status = 0.0
        while not self.stop.wait(TICK_SECONDS):
            now = time.monotonic()
            if now >= next_status:
                write_status(self.data_dir, self.status())
                next_status = now + STATUS_SECONDS
            if now >= next_root_check:
                self._check_roots()
                next_root_check = now + ROOT_CHECK_SECONDS
            if next_rescan is not None and now >= next_rescan:
                log.info("full rescan (every %g hours)", indexer.rescan_hours)
                self._full_scan([r for r in self.roots if r not in self.vanished])
                next_rescan = time.monotonic() + rescan_every
            oldest = self.queue.oldest_change()
            quiet = now - self.queue.last_event >= DEBOUNCE_SECONDS
            if oldest is not None and (quiet or now - oldest >= MAX_DELAY_SECONDS):
                changes = self.queue.take()
                if changes:
                    self._batch(changes)
            if self.writer.publish_due(TAIL_PUBLISH):
                with self._writing():
                    self.writer.finish()

    def _batch(self, changes: Changes) -> None:
        present = [r for r in self.roots if r not in self.vanished]
        self._apply(plan_changes(self.catalog, present, changes, self._same_root), "changes")

    def _same_root(self, root: str) -> bool:
        """Whether `root` is still the folder this watcher scanned (not gone, not unmounted, not replaced)."""
        return root not in self.vanished and root_identity(root) == self._identity.get(root)

    def _full_scan(self, roots: Sequence[str]) -> None:
        """Scan `roots` whole against the catalog (at start, every rescan_hours, and for a root that
        came back); a missing or emptied root is left as it is and watched for."""
        plan = Plan()
        for root in roots:
            self._identity[root] = root_identity(root)
            if not root_present(self.catalog, root):
                self._vanish(root)
                continue
            try:
                part = plan_run(self.catalog, [root])
            except RootError as exc:
                log.warning("%s; watching for it", exc)
                self._vanish(root)
                continue
            plan.candidates += part.candidates
            plan.removed += part.removed
            plan.unchanged += part.unchanged
            plan.skipped += part.skipped
            plan.kept += part.kept
            plan.scan_problems.update(part.scan_problems)
        with self._writing():
            record_scan_problems(self.catalog, plan)
        self._apply(plan, "full scan")
        if not self.stop.is_set():
            with self._writing():
                self.writer.finish()

    def _apply(self, plan: Plan, what: str) -> None:
        """Commit a plan in chunks, each under the writer lock, then forget what is gone."""
        if self._runner is None:
            raise RuntimeError("the watcher is not running")
        started = time.perf_counter()
        report = IndexReport()
        candidates, removed = plan.candidates, plan.removed
        chunks = [candidates[i:i + CHUNK_FILES] for i in range(0, len(candidates), CHUNK_FILES)] or [[]]
        for number, chunk in enumerate(chunks):
            last = number == len(chunks) - 1
            part = Plan(candidates=chunk, removed=removed if last else [],
                        unchanged=plan.unchanged if number == 0 else 0, skipped=plan.skipped if number == 0 else 0,
                        kept=plan.kept if number == 0 else 0)
            if not part.candidates and not part.removed and what == "changes":
                report.unchanged += part.unchanged
                break
            with self._writing():
                self._runner.apply(part, report)
            if self.stop.is_set():
                break
        report.seconds = time.perf_counter() - started
        self._count(report, what)

    def _count(self, report: IndexReport, what: str) -> None:
        for name in ("indexed", "linked", "unchanged", "skipped", "removed", "failed", "kept", "found"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(report, name))
        self.totals.seconds += report.seconds
        self.batches += 1
        summary = {k: v for k, v in report.to_json().items() if k not in ("failures", "unreadable")}
        self.last_batch = {"what": what, "at": time.time(), **summary}
        write_status(self.data_dir, self.status())
        if report.indexed or report.linked or report.removed or report.failed or what != "changes":
            log.info("%s: %s", what, self._summary(report))
        for failure in report.failures:
            log.info("rejected %s: %s", printable(failure["path"]), failure["error"])

    @staticmethod
    def _summary(report: IndexReport) -> str:
        return (f"indexed {report.indexed}, linked {report.linked}, removed {report.removed}, failed "
                f"{report.failed}, unchanged {report.unchanged} in {report.seconds:.1f}s")

    # --- the writer lock, and other writers ---------------------------------------------------

    @contextmanager
    def _writing(self, wait_seconds: float | None = None) -> Iterator[None]:
        """Hold the writer lock (waiting for another writer, an upload say, to finish; Stopped when a stop
        is requested meanwhile, or after `wait_seconds`); reload the index first if someone else wrote."""
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        with ExitStack() as stack:
            while True:
                try:
                    stack.enter_context(writer_lock(self.data_dir, LOCK_POLL_SECONDS))
                    break
                except LockedError as exc:
                    if (deadline is None and self.stop.is_set()) or (deadline and time.monotonic() > deadline):
                        raise Stopped from None
                    log.info("waiting: %s", exc)
            if self._state is not None and self._state != self._current_state():
                log.info("another writer changed the catalog: reloading the index")
                self.writer.open()
            yield
            self._state = self._current_state()

    def _current_state(self) -> tuple[int | None, int, int]:
        manifest = self.store.manifest()
        return (manifest.generation if manifest else None, self.catalog.max_image_id(), self.catalog.count_images())

    def _final_publish(self) -> None:
        """Publish what is committed and not published yet, unless another writer holds the lock too long."""
        try:
            with self._writing(wait_seconds=FINAL_LOCK_WAIT_SECONDS):
                self.writer.finish()
        except Stopped:
            log.warning("stopping without publishing the index: the writer lock stayed taken; servers follow "
                        "the catalog anyway, and the next writer publishes")

    # --- roots and observers ------------------------------------------------------------------

    def _start_observers(self) -> None:
        self._events = Observer()
        self._observers.append(self._events)
        poll = self.settings.indexer.watch_poll_seconds
        self._polling = PollingObserver(timeout=poll or FALLBACK_POLL_SECONDS)
        self._observers.append(self._polling)
        for root in self.roots:
            if root_present(self.catalog, root):
                self._schedule(root)
        for observer in self._observers:
            observer.daemon = True
            observer.start()

    def _schedule(self, root: str) -> None:
        watches = []
        try:
            watches.append((self._events, self._events.schedule(self.queue, root, recursive=True,
                                                                event_filter=EVENT_TYPES)))
        except OSError as exc:
            log.warning("cannot watch %s for events (%s): polling it every %gs instead", printable(root), exc,
                        self.settings.indexer.watch_poll_seconds or FALLBACK_POLL_SECONDS)
            watches.append((self._polling, self._polling.schedule(self.queue, root, recursive=True)))
        else:
            if self.settings.indexer.watch_poll_seconds:
                watches.append((self._polling, self._polling.schedule(self.queue, root, recursive=True)))
        self._watches[root] = watches

    def _unschedule(self, root: str) -> None:
        for observer, watch in self._watches.pop(root, []):
            try:
                observer.unschedule(watch)
            except (KeyError, OSError):  # the watch ended with its folder
                pass

    def _stop_observers(self) -> None:
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            if observer.is_alive():
                observer.join(timeout=5)

    def _vanish(self, root: str) -> None:
        if root in self.vanished:
            return
        self.vanished.add(root)
        self._unschedule(root)
        log.warning("library root %s is missing or empty (unmounted? renamed?): nothing under it is removed; "
                    "it is scanned again when it returns", printable(root))

    def _check_roots(self) -> None:
        """A root that went (or was replaced: an unmounted disk's mount point) is left alone until a folder
        that is not empty, or a catalog knowing nothing of it, stands there again; then it is scanned."""
        for root in self.roots:
            if root not in self.vanished and not self._same_root(root):
                self._vanish(root)
            if root in self.vanished and root_present(self.catalog, root):
                log.warning("library root %s is there again: scanning it", printable(root))
                self.vanished.discard(root)
                self._identity[root] = root_identity(root)
                if self._observers:
                    self._schedule(root)
                self._full_scan([root])

    def status(self) -> dict[str, Any]:
        """What the watcher is doing, for logs and the API."""
        oldest = self.queue.oldest_change()
        return {
            "roots": self.roots,
            "vanished": sorted(self.vanished),
            "events": self.queue.events,
            "waiting": self.queue.waiting(),
            "lag_seconds": round(time.monotonic() - oldest, 3) if oldest is not None else 0.0,
            "batches": self.batches,
            "totals": self.totals.to_json(),
            "last_batch": self.last_batch,
        }
