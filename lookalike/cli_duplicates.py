"""`lookalike duplicates`: exact and near-duplicate groups across the library, from the index."""

from __future__ import annotations

import json

import click

from lookalike.context import CliContext, human


@click.command()
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Cosine similarity at or above which two images count as near-duplicates; a group holds "
                   "images linked by such pairs (default: search.dedupe_threshold).")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.pass_obj
def duplicates(obj: CliContext, threshold: float | None, as_json: bool) -> None:
    """List groups of duplicate photos: same content at several paths, and near-duplicates.

    Near-duplicates (resized, recompressed, slightly edited copies) are found with a range
    search of every vector against the index, so this scales to large libraries.

    Each group marks the copy suggested for keeping: the most pixels, then the least
    compressed (most bytes per pixel), then the oldest file. With --json, a group's "keep"
    names it and every member says "suggested": "keep" or "remove". Nothing is deleted.

    \b
    Examples:
      lookalike duplicates
      lookalike duplicates --threshold 0.9 --json | jq '.near | length'
    """
    from indexer.model import configured_model_id
    from storage.catalog import Catalog
    from storage.duplicates import exact_groups, near_groups
    from storage.sync import open_index
    from storage.vector_index import IndexMismatchError, IndexStore

    settings = obj.settings
    if threshold is None:
        threshold = settings.search.dedupe_threshold
    config = settings.storage.index_config()
    catalog = Catalog(settings.storage.resolved_database_url(), create=False)
    try:
        mid = configured_model_id(settings.model)
        try:
            index, _ = open_index(catalog, IndexStore(settings.storage.data_dir / "index"), mid,
                                  publish_repairs=False, config=config)
        except IndexMismatchError as exc:
            raise click.ClickException(str(exc)) from None
        exact = exact_groups(catalog)
        near = near_groups(catalog, index, threshold, config) if index is not None else []
    finally:
        catalog.close()
    if as_json:
        click.echo(json.dumps({"threshold": threshold, "exact": [g.to_json() for g in exact],
                               "near": [g.to_json() for g in near]}))
        return
    for group in exact:
        click.echo(f"same content (image {group.image_id}, {group.width}x{group.height} {group.format}):")
        for copy in group.files:
            click.echo(f"  {_mark(copy.suggested)}  {human(copy.path)}")
    for similar in near:
        click.echo(f"near-duplicates (each at cosine >= {threshold} to its closest in the group, shown):")
        for member in similar.members:
            for path in member.paths[:1]:
                click.echo(f"  {member.link:.3f}  {_mark(member.suggested)}  {member.width}x{member.height}  "
                           f"{human(path)}")
    click.echo(f"{len(exact)} group(s) of identical files, {len(near)} group(s) of near-duplicates", err=True)


def _mark(suggested: str) -> str:
    """The suggested copy to keep, marked in the listing (the others are aligned with it)."""
    return "keep" if suggested == "keep" else "    "
