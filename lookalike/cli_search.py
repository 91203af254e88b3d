"""`lookalike search` and `lookalike similar`: the API's search engine in the terminal, no server needed.

`search` sends its queries to a running server of the same data dir (or `--server URL`) when there is
one, so the model is not loaded again for every command (lookalike.remote_search); `similar` never
needs the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lookalike.context import CliContext, IntUpToSetting, human
from storage.paths import display_path

if TYPE_CHECKING:  # the engine is imported by the commands that search, not by every start of the CLI
    from lookalike.remote_search import SearchServer
    from search_api.service import SearchService
    from storage.catalog import Catalog

MODEL_NOTICE = ("no `lookalike serve` of this data dir is running (or --server URL): loading the model here, "
                "which takes a while")
# Server problems that are about the uploaded image (the message names the file, as a local search does).
IMAGE_PROBLEMS = frozenset({"empty", "empty_upload", "not_image", "unsupported_format", "corrupt", "too_many_pixels",
                            "too_costly"})

F = TypeVar("F", bound=Callable[..., Any])


def _engine(obj: CliContext, on_model_load: Callable[[], None] | None = None) -> SearchService:
    """The search service over the configured data dir; exit 1 when there is nothing indexed yet."""
    from search_api.service import SearchService
    from storage.vector_index import IndexMismatchError

    service = SearchService(obj.settings, on_model_load=on_model_load)
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


def _library_reader(catalog: Callable[[], Catalog]) -> Callable[[int], bytes | None]:
    """Reads an indexed image's bytes from one of its library files, through a safe open."""
    def read(image_id: int) -> bytes | None:
        from indexer.library_files import LibraryFileError, read_library_file

        for ref in catalog().library_files(image_id):
            try:
                return read_library_file(ref.root, ref.path).data
            except LibraryFileError:
                continue
        return None

    return read


class _Queries:
    """The queries of one command: their JSON, the catalog paths behind it, and the bytes to show."""

    def __init__(self, read_indexed: Callable[[int], bytes | None]) -> None:
        self.read_indexed = read_indexed
        self.json: list[dict[str, Any]] = []
        self.raw_paths: dict[int, str] = {}
        self.raw_images: list[str] = []
        self.uploads: dict[int, bytes] = {}  # position of a query -> the bytes of its image file

    def add(self, query: dict[str, Any], raw_paths: dict[int, str], raw_image: str,
            upload: bytes | None = None) -> None:
        self.raw_paths.update(raw_paths)
        if upload is not None:
            self.uploads[len(self.json)] = upload
        self.raw_images.append(raw_image)
        self.json.append(query)

    def read(self, item: dict[str, Any]) -> bytes | None:
        """Bytes of a query or result for the contact sheet: indexed files only through a safe open."""
        for position, query in enumerate(self.json):
            if item is query and position in self.uploads:
                return self.uploads[position]
        return self.read_indexed(int(item["id"])) if "id" in item else None

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
@click.option("--server", "server_url", metavar="URL", default=None,
              help="Send the queries to this `lookalike serve` (default: the one serving this data dir, if one "
                   "runs; else the model is loaded here, which takes a while).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding an access key for the server (sent as `Authorization: Bearer KEY`).")
@click.pass_obj
def search(obj: CliContext, images: tuple[Path, ...], k: int | None, classes: tuple[str, ...], class_rule: str,
           class_min_probability: float | None, min_score: float | None, as_json: bool, html_path: Path | None,
           server_url: str | None, key_file: Path | None) -> None:
    """Find indexed images that look like IMAGES.

    A running `lookalike serve` of the same data dir answers the queries, with its model already
    loaded; without one, the model is loaded here (and that is said on stderr).

    \b
    Examples:
      lookalike search cat.jpg
      lookalike search --k 20 --class "tiger cat" --class tabby cat.jpg
      lookalike search --class dog --class-rule top1 puppy.jpg
      lookalike search --class label:receipts scan.jpg
      lookalike search --json a.jpg b.jpg | jq '.queries[0].results[0].path'
      lookalike search --html sheet.html holiday/*.jpg
      lookalike search --server http://photos.local:8000 --key-file ~/.lookalike-key cat.jpg
    """
    for image in images:
        if not image.is_file():
            raise click.ClickException(f"{human(image)}: no such file")
    class_ids = _classes(classes)
    server = _server(obj, server_url, key_file)
    if server is not None:
        from lookalike.remote_search import ServerUnreachable

        try:
            queries = _search_remote(obj, server, images, k, classes, class_rule, class_min_probability, min_score)
        except ServerUnreachable as exc:
            if server.explicit:
                raise click.ClickException(str(exc)) from None
            click.echo(f"{exc}: searching here instead", err=True)
        else:
            queries.output(as_json, html_path)
            return
    _search_here(obj, images, k, classes, class_ids, class_rule, class_min_probability, min_score).output(
        as_json, html_path)


def _search_here(obj: CliContext, images: tuple[Path, ...], k: int | None, classes: tuple[str, ...],
                 class_ids: frozenset[int] | None, class_rule: str, class_min_probability: float | None,
                 min_score: float | None) -> _Queries:
    """The queries answered in this process: the model is loaded here (unless every image is indexed)."""
    from indexer.images import ImageRejected
    from indexer.model import ModelUnavailableError
    from search_api.neighbours import QueryOptions
    from search_api.results import labels_json, neighbour_json

    rule = obj.settings.search.class_rule(class_rule, class_min_probability)
    service = _engine(obj, on_model_load=lambda: click.echo(MODEL_NOTICE, err=True))
    options = QueryOptions(k or obj.settings.search.default_k, class_ids, min_score, class_rule=rule,
                           labels=_labels(service, classes))
    queries = _Queries(_library_reader(lambda: service.catalog))
    for image in images:
        data = image.read_bytes()
        try:
            vector, predictions = service.embed_upload(data)
        except ImageRejected as exc:
            raise click.ClickException(f"{human(image)}: {exc}") from None
        except ModelUnavailableError as exc:
            raise click.ClickException(str(exc)) from None
        hits = service.search_page(vector, options).hits
        queries.add({"image": display_path(str(image)), "labels": labels_json(predictions),
                     "results": [neighbour_json(h) for h in hits]}, {h.record.id: h.record.path for h in hits},
                    str(image), upload=data)
    return queries


def _server(obj: CliContext, url: str | None, key_file: Path | None) -> SearchServer | None:
    """The server to ask: --server URL, else the running server of the data dir, else None."""
    from lookalike.remote_search import find_server, read_key

    key = None
    if key_file is not None:
        try:
            key = read_key(key_file)
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"--key-file {human(key_file)}: {getattr(exc, 'strerror', None) or exc}"
                                       ) from None
    try:
        return find_server(obj.settings.storage.data_dir, url, key)
    except ValueError as exc:
        raise click.ClickException(f"--server: {exc}") from None


def _search_remote(obj: CliContext, server: SearchServer, images: tuple[Path, ...], k: int | None,
                   classes: tuple[str, ...], class_rule: str, class_min_probability: float | None,
                   min_score: float | None) -> _Queries:
    """The queries answered by `server` (raises ServerUnreachable when it cannot answer)."""
    from lookalike.remote_search import ServerProblem, fetch_file, search_params
    from lookalike.remote_search import search as search_on

    catalog = _LocalCatalog(obj)
    params = search_params(k or obj.settings.search.default_k, classes, class_rule, class_min_probability, min_score)
    queries = _Queries(_library_reader(catalog.open) if server.same_data_dir else
                       (lambda image_id: fetch_file(server, image_id)))
    try:
        for image in images:
            data = image.read_bytes()
            try:
                answer = search_on(server, data, params)
            except ServerProblem as exc:
                if exc.code in IMAGE_PROBLEMS:
                    raise click.ClickException(f"{human(image)}: {exc.detail.split(': ', 1)[-1]}") from None
                if exc.parameter == "class":
                    raise click.ClickException(f"--class: {exc.detail}") from None
                raise click.ClickException(str(exc)) from None
            hits = answer["results"]
            # Paths with bytes that are not UTF-8 reach JSON with U+FFFD: a table shows their real bytes escaped.
            odd = [int(h["id"]) for h in hits if "\ufffd" in h["path"]] if server.same_data_dir else []
            raw = {i: r.path for i, r in catalog.open().get_images(odd).items()} if odd else {}
            queries.add({"image": display_path(str(image)), **answer}, raw, str(image), upload=data)
    finally:
        catalog.close()
    return queries


class _LocalCatalog:
    """The configured catalog, opened on first use (most remote searches never need it)."""

    def __init__(self, obj: CliContext) -> None:
        self.obj = obj
        self.catalog: Catalog | None = None

    def open(self) -> Catalog:
        if self.catalog is None:
            from storage.catalog import Catalog

            self.catalog = Catalog(self.obj.settings.storage.resolved_database_url(), create=False)
        return self.catalog

    def close(self) -> None:
        if self.catalog is not None:
            self.catalog.close()


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
    queries = _Queries(_library_reader(lambda: service.catalog))
    queries.add({"image": display_path(record.path), "id": record.id, "labels": labels_json(record.predictions),
                 "results": [neighbour_json(h) for h in hits]}, {h.record.id: h.record.path for h in hits},
                record.path)
    queries.output(as_json, html_path)
