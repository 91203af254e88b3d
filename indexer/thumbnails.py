"""Small WebP previews for result grids, one per image content, kept in the data dir.

They are written at index time from the already decoded, upright image, and re-encoded
without metadata, so EXIF (GPS position, camera serial) never leaves the server through them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

WEBP_QUALITY = 80
# Size of previews made on request when the indexer was told to write none.
DEFAULT_THUMBNAIL_SIZE = 320


def thumbnail_dir(data_dir: Path) -> Path:
    return data_dir / "thumbnails"


def thumbnail_path(data_dir: Path, content_hash: str) -> Path:
    return thumbnail_dir(data_dir) / content_hash[:2] / f"{content_hash}.webp"


def write_thumbnail(image: Image.Image, path: Path, max_side: int) -> None:
    """Write `image` shrunk to fit `max_side` as WebP at `path`, atomically (temp file, then rename)."""
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".webp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            thumb.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prune_thumbnails(data_dir: Path, keep: Iterable[str]) -> int:
    """Delete thumbnails whose content is no longer in the catalog; returns how many."""
    root = thumbnail_dir(data_dir)
    if not root.is_dir():
        return 0
    wanted = set(keep)
    removed = 0
    for path in root.glob("*/*.webp"):
        if path.stem not in wanted:
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d thumbnails of images no longer in the library", removed)
    return removed


def ensure_thumbnail(data_dir: Path, content_hash: str, source: Path, max_side: int, max_pixels: int) -> Path:
    """The thumbnail of `content_hash`, made from `source` now if the indexer did not write one.

    Raises ImageRejected if `source` cannot be decoded, OSError if it cannot be read.
    """
    from indexer.images import open_upright

    path = thumbnail_path(data_dir, content_hash)
    if not path.is_file():
        upright = open_upright(source.read_bytes(), max_side, max_pixels)
        write_thumbnail(upright.image, path, max_side)
    return path
