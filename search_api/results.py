"""JSON shapes of images, labels and search hits: a fixed contract of the HTTP API and of
`lookalike search --json`, so both build it here and nowhere else."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from flask import url_for

from indexer.label_names import LABEL_PREFIX
from indexer.labels import class_name
from search_api.neighbours import Neighbour, SearchPage
from storage.catalog import ImageRecord
from storage.paths import display_path


def labels_json(predictions: Collection[tuple[int, float]]) -> list[dict[str, object]]:
    """ImageNet predictions (class id, probability) with their class names."""
    return [
        {"class_id": class_id, "name": class_name(class_id), "probability": round(float(prob), 6)}
        for class_id, prob in predictions
    ]


def custom_labels_json(found: Collection[tuple[str, float]]) -> list[dict[str, object]]:
    return [{"name": name, "score": round(float(score), 6)} for name, score in found]


def image_json(record: ImageRecord, custom_labels: Sequence[tuple[str, float]] | None = None) -> dict[str, object]:
    """An image's details; `custom_labels` (name, score) when the caller looked them up."""
    extra = {} if custom_labels is None else {"custom_labels": custom_labels_json(custom_labels)}
    return {
        "id": record.id,
        "path": display_path(record.path),
        "paths": [display_path(p) for p in record.paths],
        "width": record.width,
        "height": record.height,
        "format": record.format,
        "size": record.size,
        "content_hash": record.content_hash,
        "labels": labels_json(record.predictions),
        **extra,
        "file_url": url_for("images.image_file", image_id=record.id),
        "thumbnail_url": url_for("images.image_thumbnail", image_id=record.id),
    }


def neighbour_json(hit: Neighbour) -> dict[str, object]:
    """The fields every search result carries, in the API and in `lookalike search --json` (no URLs: the
    command line has no server to point them at)."""
    out: dict[str, object] = {"id": hit.record.id, "path": display_path(hit.record.path),
                              "score": round(hit.score, 6),
                              "labels": labels_json(hit.record.predictions),
                              "custom_labels": custom_labels_json(hit.custom_labels)}
    if hit.duplicates is not None:
        # Files with identical content are one catalog image already: its other paths are exact duplicates.
        out["duplicates"] = list(hit.duplicates)
        out["paths"] = [display_path(p) for p in hit.record.paths]
        out["collapsed"] = len(hit.duplicates) + len(hit.record.paths) - 1
    return out


def hit_json(hit: Neighbour) -> dict[str, object]:
    """A search result of the HTTP API: the shared fields and the URLs of its file and thumbnail."""
    return {**neighbour_json(hit), "file_url": url_for("images.image_file", image_id=hit.record.id),
            "thumbnail_url": url_for("images.image_thumbnail", image_id=hit.record.id)}


def page_json(page: SearchPage) -> dict[str, object]:
    return {"results": [hit_json(h) for h in page.hits], "next_offset": page.next_offset}


def class_match_json(class_id: int) -> dict[str, object]:
    """The ImageNet class a browsed image was listed for."""
    return {"class_id": class_id, "name": class_name(class_id)}


def label_match_json(name: str) -> dict[str, object]:
    """The custom label a browsed image was listed for."""
    return {"class_id": None, "name": f"{LABEL_PREFIX}{name}", "label": name}


def browsed_json(record: ImageRecord, custom_labels: Sequence[tuple[str, float]], probability: float | None,
                 matched: dict[str, object] | None) -> dict[str, object]:
    """A browsed image: its details, and the class or label (with its probability or score) it was listed for."""
    return {**image_json(record, custom_labels), "probability": None if probability is None else round(probability, 6),
            "matched_class": matched}


def listing_json(images: list[dict[str, object]], total: int, offset: int, limit: int) -> dict[str, object]:
    """A page of browsed images."""
    return {"images": images, "total": total, "offset": offset, "limit": limit,
            "next_offset": next_offset(offset, limit, total)}


def next_offset(offset: int, limit: int, total: int) -> int | None:
    """The offset of the page after offset..offset+limit of `total` items; None on the last page."""
    return offset + limit if offset + limit < total else None
