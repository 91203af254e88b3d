"""JSON shapes of images and search hits (a fixed contract of the HTTP API)."""

from __future__ import annotations

from collections.abc import Sequence

from flask import url_for

from search_api.service import Hit, SearchPage, custom_labels_json, labels_json
from storage.catalog import ImageRecord
from storage.paths import display_path


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


def hit_json(hit: Hit) -> dict[str, object]:
    return {**hit.to_json(), "file_url": url_for("images.image_file", image_id=hit.record.id),
            "thumbnail_url": url_for("images.image_thumbnail", image_id=hit.record.id)}


def page_json(page: SearchPage) -> dict[str, object]:
    return {"results": [hit_json(h) for h in page.hits], "next_offset": page.next_offset}
