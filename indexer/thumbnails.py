"""Small WebP previews for result grids, one per image content, kept in the data dir.

They are written at index time from the already decoded, upright image, and re-encoded
without metadata, so EXIF (GPS position, camera serial) never leaves the server through them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from indexer.library_files import UNREADABLE, LibraryFileError, open_beneath, read_descriptor
from storage.catalog import FileRef
from storage.paths import printable

log = logging.getLogger(__name__)

WEBP_QUALITY = 80


def thumbnail_dir(data_dir: Path) -> Path:
    return data_dir / "thumbnails"


def thumbnail_path(data_dir: Path, content_hash: str) -> Path:
    return thumbnail_dir(data_dir) / content_hash[:2] / f"{content_hash}.webp"


def encode_thumbnail(image: Image.Image, max_side: int) -> bytes:
    """`image` shrunk to fit `max_side`, as WebP without metadata."""
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()


def store_thumbnail(webp: bytes, path: Path) -> None:
    """Write a thumbnail at `path` atomically (temp file, then rename); raises OSError when it cannot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".webp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(webp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_thumbnail(image: Image.Image, path: Path, max_side: int) -> None:
    """Write `image` shrunk to fit `max_side` as WebP at `path`, atomically (temp file, then rename)."""
    store_thumbnail(encode_thumbnail(image, max_side), path)


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


class ThumbnailUnavailable(Exception):
    """No thumbnail can be made for an image: none of its files still holds its content, decodable.

    `kind`: missing (no file there, or not a regular file), unreadable, changed (the bytes are not
    the indexed ones any more), undecodable.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# When files fail in different ways, the answer names the one that says most.
_KIND_ORDER = ("undecodable", "changed", "unreadable", "missing")


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail to send: the cached file, or the bytes made now when the cache could not take them."""

    path: Path | None = None
    data: bytes | None = None


def thumbnail_for(data_dir: Path, files: Sequence[FileRef], max_side: int, max_pixels: int) -> Thumbnail:
    """The thumbnail of the content the files of one image hold, made now if none is cached.

    A thumbnail is only ever made from bytes whose SHA-256 is the image's content hash, read from
    a descriptor opened inside the library (see indexer.library_files): a file swapped for a link,
    a FIFO or other content since it was indexed gives no thumbnail, and nothing is cached for it.
    When the thumbnail cannot be cached (a read-only data dir), it is returned in memory.
    Raises ThumbnailUnavailable when no file gives one.
    """
    if not files:
        raise ThumbnailUnavailable("missing", "the image has no file in the library")
    content_hash = files[0].content_hash
    cached = thumbnail_path(data_dir, content_hash)
    if cached.is_file():
        return Thumbnail(path=cached)
    failures: dict[str, str] = {}
    for ref in files:
        try:
            webp = _make(ref, max_side, max_pixels)
        except ThumbnailUnavailable as exc:
            log.info("no thumbnail from %s: %s", printable(ref.path), exc)
            failures.setdefault(exc.kind, str(exc))
            continue
        try:
            store_thumbnail(webp, cached)
        except OSError as exc:
            log.warning("cannot cache the thumbnail of %s in %s (%s): serving it from memory",
                        printable(ref.path), thumbnail_dir(data_dir), exc.strerror or exc)
            return Thumbnail(data=webp)
        return Thumbnail(path=cached)
    kind = next(k for k in _KIND_ORDER if k in failures)
    raise ThumbnailUnavailable(kind, failures[kind])


def _make(ref: FileRef, max_side: int, max_pixels: int) -> bytes:
    """WebP bytes of `ref`'s file, made only from bytes that hash to `ref.content_hash`."""
    from indexer.images import ImageRejected, open_upright

    try:
        fd = open_beneath(ref.root, ref.path)
    except LibraryFileError as exc:
        raise ThumbnailUnavailable("unreadable" if exc.kind == UNREADABLE else "missing", exc.reason) from None
    try:
        if os.fstat(fd).st_size != ref.size:
            raise ThumbnailUnavailable("changed", "the file changed since it was indexed")
        data = read_descriptor(fd, ref.path, limit=ref.size)
    except LibraryFileError as exc:
        raise ThumbnailUnavailable("unreadable", exc.reason) from None
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != ref.content_hash:
        raise ThumbnailUnavailable("changed", "the file changed since it was indexed")
    try:
        upright = open_upright(data, max_side, max_pixels)
    except ImageRejected as exc:
        raise ThumbnailUnavailable("undecodable", f"cannot decode the file: {exc}") from None
    return encode_thumbnail(upright.image, max_side)
