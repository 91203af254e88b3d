"""`lookalike search` and `lookalike similar`: the API's search engine in the terminal, no server needed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from lookalike.context import CliContext


def _engine(obj: CliContext):  # type: ignore[no-untyped-def]
    """The search service over the configured data dir; exit 1 when there is nothing indexed yet."""
    from search_api.service import SearchService
    from storage.vector_index import IndexMismatchError

    service = SearchService(obj.settings)
    try:
        index = service.index()
    except IndexMismatchError as exc:
        raise click.ClickException(str(exc)) from None
    if index is None or index.count == 0:
        raise click.ClickException(
            f"no index yet in {obj.settings.storage.data_dir}: run `lookalike index PATH` first"
        )
    return service


def _classes(values: tuple[str, ...]) -> frozenset[int] | None:
    from indexer.labels import UnknownClassError, resolve_classes

    try:
        return resolve_classes(values)
    except UnknownClassError as exc:
        raise click.ClickException(f"--class {exc.value}: {exc}") from None


def _print_table(query: dict[str, Any]) -> None:
    labels = ", ".join(f"{lab['name']} {lab['probability']:.2f}" for lab in query["labels"][:3])
    click.secho(f"{query['image']}", bold=True, nl=False)
    click.echo(f"  ({labels})")
    if not query["results"]:
        click.echo("  no results")
        return
    click.echo(f"  {'rank':>4}  {'score':>6}  {'top label':<28} path")
    for rank, hit in enumerate(query["results"], 1):
        top = hit["labels"][0] if hit["labels"] else {"name": "", "probability": 0.0}
        label = f"{top['name']} {top['probability']:.2f}"[:28]
        click.echo(f"  {rank:>4}  {hit['score']:>6.3f}  {label:<28} {hit['path']}")


def _output(queries: list[dict[str, Any]], as_json: bool, html_path: Path | None) -> None:
    if html_path is not None:
        from lookalike.contact_sheet import render_contact_sheet

        html_path.write_text(render_contact_sheet(queries), encoding="utf-8")
        click.echo(f"wrote contact sheet {html_path}", err=True)
    if as_json:
        click.echo(json.dumps({"queries": queries}))
        return
    for query in queries:
        _print_table(query)


_common = [
    click.option("-k", "--k", "k", type=click.IntRange(1, 1000), default=None,
                 help="Number of results (default: search.default_k)."),
    click.option("--class", "classes", multiple=True, metavar="CLASS",
                 help="Only images of this ImageNet class (id, name or WordNet id) or concept "
                      "(dog, bird, vehicle, ...); repeat for several."),
    click.option("--class-rule", type=click.Choice(["top5", "top1"]), default="top5", show_default=True,
                 help="When an image shows a class: its top-1 prediction, or (top5) also within its top 5 with "
                      "at least --class-min-probability."),
    click.option("--class-min-probability", type=click.FloatRange(0, 1), default=None,
                 help="For --class-rule top5 (default: search.class_min_probability)."),
    click.option("--min-score", type=click.FloatRange(-1, 1), default=None, help="Lowest cosine similarity to show."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Also write a self-contained HTML contact sheet to this file."),
]


def _with_common(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_with_common
@click.pass_obj
def search(obj: CliContext, images: tuple[Path, ...], k: int | None, classes: tuple[str, ...], class_rule: str,
           class_min_probability: float | None, min_score: float | None, as_json: bool, html_path: Path | None) -> None:
    """Find indexed images that look like IMAGES.

    \b
    Examples:
      lookalike search cat.jpg
      lookalike search --k 20 --class "tiger cat" --class tabby cat.jpg
      lookalike search --class dog --class-rule top1 puppy.jpg
      lookalike search --json a.jpg b.jpg | jq '.queries[0].results[0].path'
      lookalike search --html sheet.html holiday/*.jpg
    """
    from indexer.images import ImageRejected

    for image in images:
        if not image.is_file():
            raise click.ClickException(f"{image}: no such file")
    class_ids = _classes(classes)
    rule = obj.settings.search.class_rule(class_rule, class_min_probability)
    service = _engine(obj)
    k = k or obj.settings.search.default_k
    queries = []
    for image in images:
        try:
            vector, predictions = service.embed_upload(image.read_bytes())
        except ImageRejected as exc:
            raise click.ClickException(f"{image}: {exc}") from None
        from search_api.service import labels_json

        hits = service.search(vector, k, class_ids, min_score, class_rule=rule)
        queries.append({"image": str(image), "labels": labels_json(predictions),
                        "results": [h.to_json() for h in hits]})
    _output(queries, as_json, html_path)


@click.command()
@click.argument("image")
@_with_common
@click.pass_obj
def similar(obj: CliContext, image: str, k: int | None, classes: tuple[str, ...], class_rule: str,
            class_min_probability: float | None, min_score: float | None, as_json: bool,
            html_path: Path | None) -> None:
    """Neighbours of an indexed IMAGE, given by its id or its path (the image itself is left out).

    \b
    Examples:
      lookalike similar 42
      lookalike similar ~/Pictures/2024/beach.jpg --k 5
    """
    from search_api.service import labels_json

    class_ids = _classes(classes)
    rule = obj.settings.search.class_rule(class_rule, class_min_probability)
    service = _engine(obj)
    if image.isascii() and image.isdigit():  # "\u0663" is a file name, not image 3
        image_id: int | None = int(image)
    else:
        image_id = service.catalog.image_id_for_path(os.path.abspath(os.path.expanduser(image)))
    record = service.image(image_id) if image_id is not None else None
    if record is None:
        raise click.ClickException(f"{image}: not an indexed image (give an image id or the path of an indexed file)")
    hits = service.similar(record.id, k or obj.settings.search.default_k, class_ids, min_score, rule) or []
    query = {"image": record.path, "id": record.id, "labels": labels_json(record.predictions),
             "results": [h.to_json() for h in hits]}
    _output([query], as_json, html_path)
