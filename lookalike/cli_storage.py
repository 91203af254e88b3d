"""`lookalike rebuild` and `lookalike verify`: the index as a cache of the catalog, rebuilt and proven."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lookalike.context import CliContext


@click.command()
@click.pass_obj
def rebuild(obj: CliContext) -> None:
    """Rebuild the FAISS index from the catalog's stored vectors (no model run).

    The index type follows storage.index (auto: exact search while one query's scan, timed
    here, fits storage.exact_budget_ms; otherwise an inverted file sized by
    storage.index_memory_mb, with the nprobe that reaches storage.recall_target). Use it
    after changing those settings.

    \b
    Example:
      LOOKALIKE_STORAGE__INDEX="IVF1024,SQ8" lookalike rebuild
    """
    from indexer.model import configured_model_id
    from storage.catalog import Catalog
    from storage.lock import LockedError, writer_lock
    from storage.sync import build_from_catalog, check_model
    from storage.vector_index import IndexMismatchError, IndexStore, IndexWriteError

    settings = obj.settings
    m = settings.model
    mid = configured_model_id(m)
    catalog = Catalog(settings.storage.resolved_database_url(), create=False)  # before the lock makes data_dir
    try:
        with writer_lock(settings.storage.data_dir):
            check_model(catalog, mid)
            index = build_from_catalog(catalog, mid, settings.storage.index_config())
            if index is None:
                raise click.ClickException("the catalog is empty: run `lookalike index PATH` first")
            manifest = IndexStore(settings.storage.data_dir / "index").publish(index, catalog.max_image_id())
    except (LockedError, IndexMismatchError, IndexWriteError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        catalog.close()
    measured = "" if manifest.recall_at_10 is None else f", recall@10 {manifest.recall_at_10:.3f}"
    nprobe = f", nprobe {manifest.nprobe}" if manifest.nprobe else ""
    click.echo(f"rebuilt index generation {manifest.generation}: {manifest.count} vectors, {manifest.factory}"
               f"{nprobe}{measured}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify(obj: CliContext, as_json: bool) -> None:
    """Check the catalog and the index; exit 1 with a report of each kind of damage found.

    \b
    Checks: the catalog database's integrity; every stored vector finite, of unit length,
    of one model and one dimension; the index file unchanged since it was written; every
    catalog image in the index and nothing else; the index's vectors equal to the catalog's
    (exactly, or by self-search for quantised indexes); no score outside [-1, 1].
    Each problem says what repairs it (`lookalike rebuild` for the index, a backup or a
    reindex for the catalog).

    \b
    Example:
      lookalike verify --json || lookalike rebuild
    """
    from indexer.model import configured_model_id
    from storage.vector_index import IndexStore
    from storage.verify import verify_data

    settings = obj.settings
    report = verify_data(settings.storage.resolved_database_url(), IndexStore(settings.storage.data_dir / "index"),
                         configured_model_id(settings.model), settings.storage.index_config())
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(f"catalog images: {report.catalog_images}, index vectors: {report.index_vectors}, "
                   f"generation {report.generation}, {report.factory}")
        if report.reindex:
            click.echo(f"note: {report.reindex}")
        for damage in report.damage:
            click.echo(f"PROBLEM [{damage.kind}]: {damage.detail}")
            click.echo(f"  fix: {damage.fix}")
        if report.missing_from_index:
            click.echo(f"  missing from the index (first ids): {report.missing_from_index}")
        if report.unknown_in_index:
            click.echo(f"  unknown to the catalog (first ids): {report.unknown_in_index}")
        click.echo("ok" if report.ok else f"{len(report.damage)} kind(s) of damage found")
    if not report.ok:
        raise SystemExit(1)


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def backup(obj: CliContext, dest: Path, as_json: bool) -> None:
    """Copy the catalog and the index into DEST: a consistent backup, taken while they are in use.

    The SQLite catalog is copied with SQLite's online backup (one snapshot, while the server
    and even an indexer keep running); the published index generation is copied and brought
    level with the copied catalog, and the pair is verified. DEST must be new, empty, or a
    previous backup (which is replaced only once the new one is complete). DEST has the
    layout of a data directory: to restore, copy it into a new data directory, point
    storage.data_dir at it and run `lookalike verify` (docs/robustness.md). A PostgreSQL
    catalog is backed up with pg_dump; its index is still copied here.

    \b
    Example:
      lookalike backup /mnt/backups/lookalike-$(date +%F)
    """
    from storage.backup import BackupError, back_up
    from storage.catalog import Catalog

    settings = obj.settings
    url = settings.storage.resolved_database_url()
    Catalog(url, create=False).close()  # no catalog: say so, and create nothing
    try:
        report = back_up(url, settings.storage.data_dir / "index", dest)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    if report.note:
        click.echo(f"note: {report.note}", err=True)
    click.echo(f"backed up {report.images} images and index generation {report.generation} ({report.vectors} "
               f"vectors) to {dest} in {report.seconds:.1f}s")
