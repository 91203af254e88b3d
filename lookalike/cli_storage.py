"""`lookalike rebuild` and `lookalike verify`: the index as a cache of the catalog, rebuilt and proven."""

from __future__ import annotations

import json

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
    from indexer.model import model_id
    from storage.catalog import Catalog
    from storage.lock import LockedError, writer_lock
    from storage.sync import build_from_catalog, check_model
    from storage.vector_index import IndexMismatchError, IndexStore, IndexWriteError

    settings = obj.settings
    m = settings.model
    mid = model_id(m.handle, m.image_size)
    try:
        with writer_lock(settings.storage.data_dir):
            catalog = Catalog(settings.storage.resolved_database_url())
            try:
                check_model(catalog, mid)
                index = build_from_catalog(catalog, mid, settings.storage.index_config())
                if index is None:
                    raise click.ClickException("the catalog is empty: run `lookalike index PATH` first")
                manifest = IndexStore(settings.storage.data_dir / "index").publish(index, catalog.max_image_id())
            finally:
                catalog.close()
    except (LockedError, IndexMismatchError, IndexWriteError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    measured = "" if manifest.recall_at_10 is None else f", recall@10 {manifest.recall_at_10:.3f}"
    nprobe = f", nprobe {manifest.nprobe}" if manifest.nprobe else ""
    click.echo(f"rebuilt index generation {manifest.generation}: {manifest.count} vectors, {manifest.factory}"
               f"{nprobe}{measured}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify(obj: CliContext, as_json: bool) -> None:
    """Check that the index and the catalog agree; exit 1 with a report when they do not.

    \b
    Checks: every catalog vector is in the index and every index vector in the catalog,
    no id twice, one model id and one dimension everywhere, all vectors of unit length.

    \b
    Example:
      lookalike verify --json || lookalike rebuild
    """
    from indexer.model import model_id
    from storage.catalog import Catalog
    from storage.vector_index import IndexStore
    from storage.verify import verify as run_verify

    settings = obj.settings
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        report = run_verify(catalog, IndexStore(settings.storage.data_dir / "index"),
                            model_id(settings.model.handle, settings.model.image_size))
    finally:
        catalog.close()
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(f"catalog images: {report.catalog_images}, index vectors: {report.index_vectors}, "
                   f"generation {report.generation}, {report.factory}")
        for problem in report.problems:
            click.echo(f"PROBLEM: {problem}")
        if report.missing_from_index:
            click.echo(f"  missing from the index (first ids): {report.missing_from_index}")
        if report.unknown_in_index:
            click.echo(f"  unknown to the catalog (first ids): {report.unknown_in_index}")
        click.echo("ok" if report.ok else "index and catalog disagree: `lookalike rebuild` repairs the index")
    if not report.ok:
        raise SystemExit(1)
