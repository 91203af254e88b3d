"""`lookalike search` and `lookalike similar`: the API's search engine in the terminal, no server needed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lookalike.context import CliContext, IntUpToSetting, human
from storage.paths import display_path

if TYPE_CHECKING:  # the engine is imported by the commands that search, not by every start of the CLI
    from search_api.neighbours import Neighbour
    from search_api.service import SearchService

F = TypeVar("F", bound=Callable[..., Any])


def _engine(obj: CliContext) -> SearchService:
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


def _labels(service: SearchService, values: tuple[str, ...]) -> tuple[int, ...]:
    """Custom labels named by `--class label:NAME`."""
    from indexer.custom_labels import LabelBook
    from indexer.label_names import LabelError, split_label_filters

    try:
        return LabelBook(service.catalog, service.model_id).resolve(split_label_filters(values))
    except LabelError as exc:
        raise click.ClickException(f"--class: {exc}") from None


def _print_table(query: dict[str, Any], raw_paths: dict[int, str]) -> None:
    """One query as a table; paths are printed from `raw_paths` (id -> catalog path), escaped for the terminal."""
    labels = ", ".join(f"{lab['name']} {lab['probability']:.2f}" for lab in query["labels"][:3])
    click.secho(human(query.get("raw_image", query["image"])), bold=True, nl=False)
    click.echo(f"  ({labels})")
    if not query["results"]:
        click.echo("  no results")
        return
    click.echo(f"  {'rank':>4}  {'score':>6}  {'top label':<28} path")
    for rank, hit in enumerate(query["results"], 1):
        top = hit["labels"][0] if hit["labels"] else {"name": "", "probability": 0.0}
        label = f"{top['name']} {top['probability']:.2f}"[:28]
        click.echo(f"  {rank:>4}  {hit['score']:>6.3f}  {label:<28} {human(raw_paths.get(hit['id'], hit['path']))}")


class _Queries:
    """The queries of one command: their JSON, the catalog paths behind it, and the bytes to show."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.json: list[dict[str, Any]] = []
        self.raw_paths: dict[int, str] = {}
        self.raw_images: list[str] = []
        self.uploads: dict[int, bytes] = {}  # position of a query -> the bytes of its image file

    def add(self, query: dict[str, Any], hits: Sequence[Neighbour], raw_image: str,
            upload: bytes | None = None) -> None:
        self.raw_paths.update({hit.record.id: hit.record.path for hit in hits})
        if upload is not None:
            self.uploads[len(self.json)] = upload
        self.raw_images.append(raw_image)
        self.json.append(query)

    def read(self, item: dict[str, Any]) -> bytes | None:
        """Bytes of a query or result for the contact sheet: indexed files only through a safe open."""
        from indexer.library_files import LibraryFileError, read_library_file

        for position, query in enumerate(self.json):
            if item is query and position in self.uploads:
                return self.uploads[position]
        for ref in self.service.catalog.library_files(int(item["id"])) if "id" in item else []:
            try:
                return read_library_file(ref.root, ref.path).data
            except LibraryFileError:
                continue
        return None

    def output(self, as_json: bool, html_path: Path | None) -> None:
        if html_path is not None:
            from lookalike.contact_sheet import render_contact_sheet

            html_path.write_text(render_contact_sheet(self.json, self.read), encoding="utf-8")
            click.echo(f"wrote contact sheet {human(html_path)}", err=True)
        if as_json:
            click.echo(json.dumps({"queries": self.json}))
            return
        for query, raw_image in zip(self.json, self.raw_images, strict=True):
            _print_table({**query, "raw_image": raw_image}, self.raw_paths)


_common = [
    click.option("-k", "--k", "k", type=IntUpToSetting(1, "search.max_k"), default=None,
                 help="Number of results (default: search.default_k; at most search.max_k)."),
    click.option("--class", "classes", multiple=True, metavar="CLASS",
                 help="Only images of this ImageNet class (id, name or WordNet id), concept "
                      "(dog, bird, vehicle, ...) or custom label (label:NAME); repeat for several."),
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


def _with_common(fn: F) -> F:
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
      lookalike search --class label:receipts scan.jpg
      lookalike search --json a.jpg b.jpg | jq '.queries[0].results[0].path'
      lookalike search --html sheet.html holiday/*.jpg
    """
    from indexer.images import ImageRejected
    from search_api.neighbours import QueryOptions
    from search_api.results import labels_json, neighbour_json

    for image in images:
        if not image.is_file():
            raise click.ClickException(f"{human(image)}: no such file")
    class_ids = _classes(classes)
    rule = obj.settings.search.class_rule(class_rule, class_min_probability)
    service = _engine(obj)
    options = QueryOptions(k or obj.settings.search.default_k, class_ids, min_score, class_rule=rule,
                           labels=_labels(service, classes))
    queries = _Queries(service)
    for image in images:
        data = image.read_bytes()
        try:
            vector, predictions = service.embed_upload(data)
        except ImageRejected as exc:
            raise click.ClickException(f"{human(image)}: {exc}") from None
        hits = service.search_page(vector, options).hits
        queries.add({"image": display_path(str(image)), "labels": labels_json(predictions),
                     "results": [neighbour_json(h) for h in hits]}, hits, str(image), upload=data)
    queries.output(as_json, html_path)


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
    from search_api.neighbours import QueryOptions
    from search_api.results import labels_json, neighbour_json

    class_ids = _classes(classes)
    rule = obj.settings.search.class_rule(class_rule, class_min_probability)
    service = _engine(obj)
    labels = _labels(service, classes)
    if image.isascii() and image.isdigit():  # "\u0663" is a file name, not image 3
        image_id: int | None = int(image)
    else:
        image_id = service.catalog.image_id_for_path(os.path.abspath(os.path.expanduser(image)))
    record = service.image(image_id) if image_id is not None else None
    if record is None:
        raise click.ClickException(f"{human(image)}: not an indexed image (give an image id or the path of an "
                                   "indexed file)")
    page = service.similar_page(record.id, QueryOptions(k or obj.settings.search.default_k, class_ids, min_score,
                                                        class_rule=rule, labels=labels))
    hits = page.hits if page is not None else []
    queries = _Queries(service)
    queries.add({"image": display_path(record.path), "id": record.id, "labels": labels_json(record.predictions),
                 "results": [neighbour_json(h) for h in hits]}, hits, record.path)
    queries.output(as_json, html_path)
