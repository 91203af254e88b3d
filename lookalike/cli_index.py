"""`lookalike index` and `lookalike errors`: bring the catalog in step with a library, and list what it refused."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import click

from lookalike.context import CliContext, human

if TYPE_CHECKING:  # imported when used: the CLI starts without loading the indexer
    from tqdm import tqdm

    from indexer.report import IndexReport, Progress
    from indexer.settings import Settings


class _ProgressBar:
    """A tqdm bar on stderr: files done of those to index, per-outcome counts, images/s and ETA."""

    def __init__(self, enabled: bool, also: Progress | None = None) -> None:
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None
        self.counts = {"embedded": 0, "linked": 0, "failed": 0}
        self.also = also  # another Progress told the same (a job's file)

    def start(self, total: int, found: int = 0) -> None:
        from tqdm import tqdm

        if self.also is not None:
            self.also.start(total, found)
        self.close()  # a reindex run has two phases, each with its own bar
        self.bar = tqdm(total=total, unit="img", disable=not self.enabled, file=sys.stderr, dynamic_ncols=True,
                        desc=f"found {found:,}, to index")

    def advance(self, outcome: str) -> None:
        if self.also is not None:
            self.also.advance(outcome)
        self.counts["embedded" if outcome == "indexed" else outcome] += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(self.counts, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stoppable(Protocol):
    def request_stop(self) -> None: ...


@contextmanager
def stop_on_interrupt(target: _Stoppable, announce: bool = True) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: ask `target` to stop after the work in hand (an index run commits what
    is done, a watcher finishes its batch and publishes), saying so when `announce`. A second one
    aborts at once."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def abort(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def handler(signum: int, _frame: FrameType | None) -> None:
        if announce:
            what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
            click.echo(f"\nstopping after the current batch ({what} again aborts now)...", err=True)
        target.request_stop()
        for other in STOP_SIGNALS:
            signal.signal(other, abort)

    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)
    except ValueError:  # not the main thread: no signal handling, Ctrl-C aborts as usual
        yield
        return
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


@click.command()
# Not `required`: `--ray FOLDER` takes the folder for the address, and the error should say so. Not
# `readable`: a folder that cannot be listed keeps its images and is reported, it does not stop the run.
@click.argument("paths", nargs=-1, type=click.Path(file_okay=False, readable=False), metavar="[PATHS]...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line of stdout.")
@click.option("--reindex", is_flag=True,
              help="Embed every image again with the configured model (after a model change), beside the current "
                   "vectors, which keep serving until the switch; run it again to resume after a stop.")
@click.option("--allow-empty-root", is_flag=True,
              help="Accept a folder with no images left although the catalog holds some from it, and remove them.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Read and embed on a Ray cluster: alone for a local Ray, or auto, ray://HOST:PORT, HOST:PORT "
                   "(needs the `distributed` extra).")
@click.option("--wait", is_flag=True,
              help="When another indexer or a watcher is writing to the data directory, wait for it instead of "
                   "stopping.")
@click.option("--job", "job_id", default=None, hidden=True,
              help="Write progress and summary into this job of the data directory (POST /api/v1/jobs/index).")
@click.option("--parent-pid", type=int, default=None, hidden=True, help="End when this process ends.")
@click.pass_obj
def index(obj: CliContext, paths: tuple[str, ...], as_json: bool, reindex: bool, allow_empty_root: bool,
          ray_address: str | None, wait: bool, job_id: str | None, parent_pid: int | None) -> None:
    """Index the photos under PATHS (folders, searched recursively), by default the folders of indexer.roots.

    New and changed images are embedded, moved or duplicated ones are linked to their
    existing vectors, and images whose files disappeared are removed. Files that cannot be
    decoded are recorded (see `lookalike errors`) and skipped until they change.
    Work is committed in batches: after Ctrl-C or a crash, run the same command again to resume.

    \b
    Examples:
      lookalike index ~/Pictures /mnt/photos
      lookalike index                                   # the folders listed in indexer.roots
      lookalike index --json ~/Pictures | tail -n 1
      lookalike index ~/Pictures --ray                  # a local Ray (started, or the one running here)
      lookalike index /mnt/photos --ray auto           # the cluster this machine is part of
    """
    if not paths:
        if ray_address not in (None, "local", "auto"):
            raise click.UsageError(f"Missing argument 'PATHS...' (--ray took {ray_address!r} for the Ray address: "
                                   "put --ray after the folders).")
        paths = configured_roots(obj.settings)
    if parent_pid is not None:
        from indexer.lifeline import die_with_parent

        die_with_parent(parent_pid)
    if job_id is None:
        report_index_run(run_index(obj.settings, paths, reindex, allow_empty_root, ray_address, wait), as_json)
        return
    from indexer.index_jobs import JobProgress

    job = JobProgress(obj.settings.storage.data_dir, job_id)
    try:
        report = run_index(obj.settings, paths, reindex, allow_empty_root, ray_address, wait, job)
    except click.ClickException as exc:
        job.fail(exc.message)
        raise
    except BaseException as exc:
        job.fail(f"{type(exc).__name__}: {exc}")
        raise
    job.finish(report.to_json())
    report_index_run(report, as_json)


def configured_roots(settings: Settings) -> tuple[str, ...]:
    """The library folders of `indexer.roots`, for a command given no PATH; a usage error when there are none."""
    roots = tuple(str(root) for root in settings.indexer.roots)
    if not roots:
        raise click.UsageError("Missing argument 'PATHS...': give the folders to index, or list them in "
                               "indexer.roots (config.yaml, or LOOKALIKE_INDEXER__ROOTS=/photos:/mnt/more).")
    return roots


def run_index(settings: Settings, paths: Sequence[str], reindex: bool = False, allow_empty_root: bool = False,
              ray_address: str | None = None, wait: bool = False, job: Progress | None = None) -> IndexReport:
    """One indexing run under the writer lock, with a progress bar on a terminal; errors become exit 1.

    With `ray_address`, files are read and embedded on that Ray cluster (see indexer.distributed). With
    `wait`, a run that finds another writer (or a watcher) waits for it instead of stopping.
    """
    from indexer.model import Embedder, ModelUnavailableError, configured_model_id
    from indexer.pipeline import LibraryIndexer
    from indexer.scan import RootError
    from storage.catalog import Catalog
    from storage.lock import LockedError, index_run_lock
    from storage.vector_index import IndexMismatchError, IndexStore, IndexWriteError

    data_dir = settings.storage.data_dir
    m = settings.model
    bar = _ProgressBar(enabled=sys.stderr.isatty(), also=job)
    errors: tuple[type[Exception], ...] = (RootError, ModelUnavailableError, LockedError, IndexMismatchError,
                                           IndexWriteError)
    try:
        with ExitStack() as stack:
            if ray_address is not None:
                distributed = _distributed_modules()
                errors += (distributed.ClusterError, distributed.DistributedIndexError)
                distributed.check_address(ray_address)  # a folder taken for the address stops here
            if wait:
                _say_whom_we_wait_for(data_dir)
            stack.enter_context(index_run_lock(data_dir, wait))
            catalog = Catalog(settings.storage.resolved_database_url())
            stack.callback(catalog.close)
            store, mid = IndexStore(data_dir / "index"), configured_model_id(m)
            if ray_address is None:
                indexer = LibraryIndexer(settings, catalog, store, mid, lambda: Embedder.from_settings(m),
                                         progress=bar)
            else:
                cluster = stack.enter_context(distributed.ray_cluster(ray_address))
                indexer = distributed.RayIndexer(settings, catalog, store, mid, cluster, progress=bar)
            with stop_on_interrupt(indexer):
                return indexer.run(paths, reindex=reindex, allow_empty_roots=allow_empty_root)
    except errors as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()


def _say_whom_we_wait_for(data_dir: Path) -> None:
    """With --wait: one line on stderr when the run has to wait, so a silent start is not taken for a hang."""
    from storage.lock import WRITER_LOCK, holder, watcher_pid

    if (pid := watcher_pid(data_dir)) is not None:
        click.echo(f"waiting for the watcher (pid {pid}) keeping {data_dir} in step to stop", err=True)
    elif (pid := holder(data_dir, WRITER_LOCK)) is not None:
        click.echo(f"waiting for the indexer (pid {pid}) writing to {data_dir} to finish", err=True)


def _distributed_modules() -> SimpleNamespace:
    """The Ray-backed indexer, or a clear error when the `distributed` extra is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "--ray needs Ray: install the distributed extra (pip install 'lookalike[distributed]')"
        ) from None
    from indexer.distributed import DistributedIndexError, RayIndexer
    from indexer.ray_cluster import ClusterError, check_address, ray_cluster

    return SimpleNamespace(ClusterError=ClusterError, DistributedIndexError=DistributedIndexError,
                           RayIndexer=RayIndexer, check_address=check_address, ray_cluster=ray_cluster)


def report_index_run(report: IndexReport, as_json: bool) -> None:
    summary = report.to_json()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"found {report.found}: indexed {report.indexed}, linked {report.linked}, unchanged {report.unchanged}, "
            f"skipped {report.skipped}, removed {report.removed}, failed {report.failed} in {report.seconds:.1f}s "
            f"({summary['images_per_second']} images/s)"
        )
        if report.reindexed or report.reindex_resumed or report.not_reindexed:
            click.echo(f"  reindex: {report.reindexed} images embedded again this run, {report.reindex_resumed} by an "
                       f"earlier run, {report.not_reindexed} could not be read again"
                       + ("" if report.interrupted else "; the catalog and index now use the configured model"))
        for failure in report.failures:
            click.echo(f"  rejected {human(failure['path'])}: {human(failure['error'])}", err=True)
        for unread in report.unreadable:
            click.echo(f"  cannot read {human(unread['path'])}: {human(unread['error'])}", err=True)
        if report.unreadable:
            click.echo(f"  {report.kept} catalog file(s) under what could not be read were kept as they were; "
                       "`lookalike errors` lists what could not be read", err=True)
        if report.skipped:
            click.echo(f"  {report.skipped} files rejected before were skipped: `lookalike errors` lists them",
                       err=True)
    if report.interrupted:
        click.echo("stopped early: everything above is saved. Run the same command again to resume.", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option("--root", default=None, help="Only files under this library folder.")
@click.pass_obj
def errors(obj: CliContext, as_json: bool, root: str | None) -> None:
    """List the files the indexer rejected, and the folders and files it could not read, and why.

    Rejected files are skipped by later runs until they change (new size or modification time).
    Folders that could not be listed (kind unreadable_folder) and files that could not be read
    (kind unreadable) keep the images the catalog had for them; they are tried again on every run
    and leave this list once they read again.

    \b
    Example:
      lookalike errors --json | jq '.[].path'
    """
    from indexer.scan import RootError, resolve_root
    from storage.catalog import Catalog

    settings = obj.settings
    if root is not None:
        try:
            root = str(resolve_root(root))
        except RootError as exc:
            raise click.ClickException(str(exc)) from None
    catalog = Catalog(settings.storage.resolved_database_url(), create=False)
    try:
        rejected = catalog.rejections(root)
    finally:
        catalog.close()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rejected]))
        return
    for r in rejected:
        click.echo(f"{human(r.path)}\t{r.kind}\t{human(r.reason)}")
    click.echo(f"{len(rejected)} rejected file(s)", err=True)
