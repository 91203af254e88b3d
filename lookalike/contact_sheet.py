"""A self-contained HTML contact sheet: each query beside its results, thumbnails embedded inline."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps

THUMB = 200

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#f6f6f4;color:#222}
h1{font-size:1.3rem} section{margin-bottom:2rem}
.row{display:flex;flex-wrap:wrap;gap:.8rem;align-items:flex-start}
figure{margin:0;width:200px;background:#fff;border-radius:8px;padding:.5rem;box-shadow:0 1px 3px #0002}
figure.query{outline:3px solid #3b6fd8}
img{width:200px;height:200px;object-fit:contain;background:#eee;border-radius:4px}
figcaption{font-size:.8rem;line-height:1.3;word-break:break-all}
.score{font-weight:600}
"""


def thumbnail_data_uri(data: bytes | None) -> str:
    """A small JPEG of an image's bytes as a data: URI, or an empty string when there are none or they
    cannot be decoded (the bytes are read by the caller: library files only through a safe open)."""
    if not data:
        return ""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMB, THUMB))
            thumb = ImageOps.exif_transpose(im).convert("RGB")
            thumb.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            thumb.save(buf, "JPEG", quality=80)
    except (OSError, ValueError, SyntaxError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(data: bytes | None, caption: str, css: str = "") -> str:
    uri = thumbnail_data_uri(data)
    img = f'<img src="{uri}" alt="">' if uri else "<div>(unreadable)</div>"
    return f'<figure class="{css}">{img}<figcaption>{caption}</figcaption></figure>'


def _label(labels: list[dict[str, Any]]) -> str:
    if not labels:
        return ""
    top = labels[0]
    return f"{html.escape(str(top['name']))} {float(top['probability']):.2f}"


def render_contact_sheet(queries: list[dict[str, Any]], read: Callable[[dict[str, Any]], bytes | None],
                         title: str = "lookalike results") -> str:
    """HTML for queries shaped like `lookalike search --json` output ({"image", "labels", "results"});
    `read(item)` gives the bytes of a query or a result, or None."""
    sections = []
    for query in queries:
        figures = [_figure(read(query), f"query: {html.escape(query['image'])}<br>{_label(query['labels'])}",
                           "query")]
        for rank, hit in enumerate(query["results"], 1):
            caption = (f'#{rank} <span class="score">{hit["score"]:.3f}</span> {_label(hit["labels"])}'
                       f"<br>{html.escape(hit['path'])}")
            figures.append(_figure(read(hit), caption))
        sections.append(f'<section><div class="row">{"".join(figures)}</div></section>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")
