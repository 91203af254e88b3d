"""`lookalike label ...`: teach custom labels from example images, inspect and change them (no server needed)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from lookalike.context import CliContext

if TYPE_CHECKING:
    from indexer.custom_labels import LabelBook

MEMBERS_SHOWN = 50


@contextmanager
def _book(obj: CliContext) -> Iterator[LabelBook]:
    """The label book of the configured catalog and model; label errors become one-line messages."""
    from indexer.custom_labels import LabelBook
    from indexer.label_names import LabelError
    from indexer.model import ModelUnavailableError, configured_model_id
    from storage.catalog import Catalog

    settings = obj.settings
    try:
        mid = configured_model_id(settings.model)
    except ModelUnavailableError as exc:
        raise click.ClickException(str(exc)) from None
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        yield LabelBook(catalog, mid, index_dir=settings.storage.data_dir / "index")
    except LabelError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        catalog.close()


def _printable(text: str) -> str:
    """A path or name on one line: control characters and undecodable bytes escaped."""
    escaped = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)


def _image_ids(book: LabelBook, images: tuple[str, ...]) -> list[int]:
    """Image ids from ids or paths of indexed files."""
    ids = []
    for image in images:
        if image.isdigit():
            ids.append(int(image))
            continue
        try:
            found = book.catalog.image_id_for_path(os.path.abspath(os.path.expanduser(image)))
        except (UnicodeError, ValueError):  # a name the catalog cannot hold as given
            found = None
        if found is None:
            raise click.ClickException(f"{_printable(image)}: not an indexed image (give an image id or the path of "
                                       "an indexed file)")
        ids.append(found)
    return ids


def _rescore(book: LabelBook, name: str) -> dict[str, object]:
    label = book.get(name)
    if label.scoring:
        book.rescore(label.id)
    return book.to_json(book.get(name))


def _how_many(ids: object) -> int:
    """The length of a JSON list of ids."""
    return len(ids) if isinstance(ids, list) else 0


def _summary(label: dict[str, object]) -> str:
    quality = label.get("quality")
    estimate = f", cross-validated AUC {quality['auc']:.2f}" if isinstance(quality, dict) else ""
    state = "" if label["state"] == "ready" else f" [{label['state']}]"
    return (f"{label['name']}{state}: {label['count']} image(s) at threshold {label['threshold']:.2f}; "
            f"{_how_many(label['positive_ids'])} positive, {_how_many(label['negative_ids'])} negative example(s)"
            f"{estimate}")


def _report(label: dict[str, object], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(label))
        return
    click.echo(_summary(label))
    if label.get("message"):
        click.echo(f"  {label['message']}")


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group()
def label() -> None:
    """Teach your own labels from a few example images, and search by them with --class label:NAME.

    A label is learned from the stored feature vectors of its examples (no model run) and scores
    every image; images at or above its threshold have it.

    \b
    Examples:
      lookalike label create receipts 12 40 41 ~/Pictures/scan-3.jpg
      lookalike label show receipts
      lookalike search --class label:receipts photo.jpg
    """


@label.command("create")
@click.argument("name")
@click.argument("images", nargs=-1, required=True)
@click.option("--negative", "negatives", multiple=True, metavar="ID|PATH",
              help="An image that is not of the label; repeat for several.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Lowest score of an image that has the label (default: the learned one).")
@_json_option
@click.pass_obj
def create(obj: CliContext, name: str, images: tuple[str, ...], negatives: tuple[str, ...], threshold: float | None,
           as_json: bool) -> None:
    """Teach a new label NAME from example IMAGES (image ids or paths of indexed files).

    \b
    Examples:
      lookalike label create "gas meter" 412 977 1033
      lookalike label create rex ~/Pictures/rex/*.jpg --negative ~/Pictures/other-dog.jpg
    """
    with _book(obj) as book:
        created = book.create(name, _image_ids(book, images), _image_ids(book, negatives), threshold)
        _report(_rescore(book, created.name), as_json)


@label.command("add-examples")
@click.argument("name")
@click.argument("images", nargs=-1, required=True)
@click.option("--negative", is_flag=True, help="Add them as images that are NOT of the label.")
@_json_option
@click.pass_obj
def add_examples(obj: CliContext, name: str, images: tuple[str, ...], negative: bool, as_json: bool) -> None:
    """Add example IMAGES to label NAME (an example of the other kind moves over) and relearn it.

    \b
    Examples:
      lookalike label add-examples receipts 88 ~/scans/receipt-9.png
      lookalike label add-examples receipts 131 --negative
    """
    with _book(obj) as book:
        ids = _image_ids(book, images)
        book.change(name, add_negative_ids=ids) if negative else book.change(name, add_positive_ids=ids)
        _report(_rescore(book, name), as_json)


@label.command("remove-examples")
@click.argument("name")
@click.argument("images", nargs=-1, required=True)
@_json_option
@click.pass_obj
def remove_examples(obj: CliContext, name: str, images: tuple[str, ...], as_json: bool) -> None:
    """Forget example IMAGES of label NAME (positive or negative) and relearn it.

    \b
    Example:
      lookalike label remove-examples receipts 88
    """
    with _book(obj) as book:
        book.change(name, remove_ids=_image_ids(book, images))
        _report(_rescore(book, name), as_json)


@label.command("set-threshold")
@click.argument("name")
@click.argument("threshold")
@_json_option
@click.pass_obj
def set_threshold(obj: CliContext, name: str, threshold: str, as_json: bool) -> None:
    """Set the THRESHOLD of label NAME: a score from 0 to 1, or "auto" for the learned default.

    \b
    Examples:
      lookalike label set-threshold receipts 0.7
      lookalike label set-threshold receipts auto
    """
    if threshold == "auto":
        value: float | None = None
    else:
        try:
            value = float(threshold)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise click.BadParameter(f"{threshold!r} is not a number from 0 to 1 nor 'auto'", param_hint="THRESHOLD")
    with _book(obj) as book:
        book.change(name, threshold=value)
        _report(_rescore(book, name), as_json)


@label.command("relearn")
@click.argument("name")
@_json_option
@click.pass_obj
def relearn(obj: CliContext, name: str, as_json: bool) -> None:
    """Learn label NAME again from its examples, e.g. after the library was indexed with another model.

    \b
    Example:
      lookalike label relearn receipts
    """
    with _book(obj) as book:
        book.change(name, relearn=True)
        _report(_rescore(book, name), as_json)


@label.command("list")
@_json_option
@click.pass_obj
def list_labels(obj: CliContext, as_json: bool) -> None:
    """List every custom label with its image count.

    \b
    Examples:
      lookalike label list
      lookalike label list --json | jq '.labels[].name'
    """
    from storage.label_queries import member_counts

    with _book(obj) as book:
        for pending in book.pending():
            book.rescore(pending)
        counts = member_counts(book.catalog)
        labels = [book.to_json(item, counts) for item in book.all()]
    if as_json:
        click.echo(json.dumps({"labels": labels}))
        return
    if not labels:
        click.echo("no custom labels yet: teach one with `lookalike label create NAME IMAGE...`")
    for item in labels:
        click.echo(_summary(item))


@label.command("show")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 10_000), default=MEMBERS_SHOWN, show_default=True,
              help="Most images to list.")
@_json_option
@click.pass_obj
def show(obj: CliContext, name: str, limit: int, as_json: bool) -> None:
    """Show label NAME and its images, best first; near misses below the threshold follow, and
    borderline scores (worth confirming or rejecting) are marked with "?".

    \b
    Examples:
      lookalike label show receipts
      lookalike label show receipts --json | jq '.members[] | select(.borderline) | .id'
    """
    with _book(obj) as book:
        found = book.get(name)
        if found.scoring:
            book.rescore(found.id)
            found = book.get(name)
        members, total = book.members(found, 0, limit)
        records = book.catalog.get_images([m.image_id for m in members])
        label_json = book.to_json(found)
    listed = [{"id": m.image_id, "path": records[m.image_id].path, "score": round(m.score, 6), "member": m.member,
               "borderline": m.borderline, "example": m.example} for m in members if m.image_id in records]
    if as_json:
        click.echo(json.dumps({"label": label_json, "members": listed, "total": total}))
        return
    _report(label_json, False)
    for item in listed:
        mark = "?" if item["borderline"] else " "
        kind = {"positive": "+", "negative": "-"}.get(str(item["example"]), " ")  # example: positive, negative or None
        below = "" if item["member"] else "  (below the threshold)"
        click.echo(f"  {item['score']:.3f}{mark}{kind} {item['id']:>7}  {_printable(str(item['path']))}{below}")
    if total > len(listed):
        click.echo(f"  ... {total - len(listed)} more (--limit)")


@label.command("delete")
@click.argument("name")
@click.pass_obj
def delete(obj: CliContext, name: str) -> None:
    """Delete label NAME (its examples and scores; the images stay).

    \b
    Example:
      lookalike label delete receipts
    """
    with _book(obj) as book:
        book.delete(name)
    click.echo(f"deleted label {name}")
