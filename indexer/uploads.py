"""Images added over HTTP: kept in `storage.upload_dir`, one folder per content hash, indexed like a library root.

A file is written (temporary name, fsync, rename) before the catalog row that names it is committed,
and removed only after the row that named it is gone: a crash in between leaves at most a file that
no row names, which `reconcile` removes at the next start. So no catalog row ever names a file that
is not there, and nothing is half-indexed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from storage.catalog import Catalog, FileRef

log = logging.getLogger(__name__)

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif",
              "HEIF": "heic", "AVIF": "avif", "MPO": "jpg"}
NAME_MAX = 80  # characters of the client's name kept
NAME_BYTES = 200  # and at most this many bytes of it (file systems allow 255 per name, extension included)
_UNSAFE = re.compile(r"[^\w.\- ()]+")
_HASH_FOLDER = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredUpload:
    path: Path
    ref: FileRef


def safe_name(name: str | None, image_format: str) -> str:
    """A file name for an upload: the client's name without folders or odd characters, with the right extension."""
    extension = EXTENSIONS.get(image_format.upper(), image_format.lower() or "img")
    stem = Path((name or "").replace("\\", "/")).name
    stem = _UNSAFE.sub("_", stem.rsplit(".", 1)[0] if "." in stem else stem).strip(" ._")[:NAME_MAX]
    stem = stem.encode("utf-8", "surrogateescape")[:NAME_BYTES].decode("utf-8", "ignore").rstrip(" ._")
    return f"{stem or 'upload'}.{extension}"


class UploadStore:
    """The upload folder: a root of the catalog whose files only this store writes and removes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    @property
    def root_text(self) -> str:
        return str(self.root)

    def holds(self, ref: FileRef) -> bool:
        return ref.root == self.root_text

    def store(self, data: bytes, content_hash: str, name: str) -> StoredUpload:
        """Write the upload durably under <root>/<hash[:2]>/<hash>/<name> (an existing copy is reused)."""
        folder = self.root / content_hash[:2] / content_hash
        self.root.mkdir(parents=True, exist_ok=True)
        for part in (folder.parent, folder):  # real folders: a link planted here could lead anywhere
            if part.is_symlink():
                log.warning("replacing the link %s in the upload folder by a folder", part)
                part.unlink()
            part.mkdir(exist_ok=True)
        path = folder / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size != len(data):
            fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            _fsync_dir(folder)
        st = path.stat()
        return StoredUpload(path, FileRef(str(path), self.root_text, st.st_size, st.st_mtime_ns, content_hash))

    def remove(self, path: str) -> None:
        """Remove an upload's file and its content folder once its catalog row is gone."""
        file = Path(path)
        if file.parent.parent.parent != self.root:
            raise ValueError(f"{path} is not an upload of {self.root}")
        if not _is_real_dir(file.parent.parent):
            log.warning("not removing %s: %s is not a folder of the upload store", path, file.parent.parent)
        elif file.parent.is_symlink():
            file.parent.unlink()  # the link only, never what it leads to
        else:
            shutil.rmtree(file.parent, ignore_errors=True)

    def reconcile(self, catalog: Catalog) -> list[str]:
        """Remove the files no catalog row names (left by a crash between storing and committing); what went.

        Only the store's own layout is touched: real folders `<2 hex>/<64 hex>` (never a link: one planted
        here could lead anywhere) and the files or links directly inside them; anything else someone put
        in the folder stays."""
        if not self.root.is_dir():
            return []
        named = set(catalog.files_under(self.root_text))
        removed = []
        for folder in self._content_folders():
            entries = list(folder.iterdir())
            orphans = [p for p in entries if not p.is_dir() or p.is_symlink()]
            orphans = [p for p in orphans if str(p) not in named]
            for orphan in orphans:
                orphan.unlink(missing_ok=True)  # a link itself, never what it leads to
                removed.append(str(orphan))
            if len(orphans) == len(entries):
                with contextlib.suppress(OSError):
                    folder.rmdir()
                with contextlib.suppress(OSError):
                    folder.parent.rmdir()  # only when empty
        if removed:
            log.warning("removed %d uploaded file(s) that no catalog row names (an upload cut short): %s",
                        len(removed), ", ".join(removed[:5]))
        return removed

    def _content_folders(self) -> list[Path]:
        """`<root>/<hh>/<hash>` folders that are real directories (links are not followed)."""
        found = []
        for prefix in sorted(self.root.iterdir()):
            if not _is_real_dir(prefix) or len(prefix.name) != 2:
                continue
            for folder in sorted(prefix.iterdir()):
                if _HASH_FOLDER.match(folder.name) and folder.name.startswith(prefix.name) and _is_real_dir(folder):
                    found.append(folder)
        return found


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reconcile_at_start(data_dir: Path, upload_dir: Path, catalog: Catalog) -> list[str]:
    """Reconcile the upload folder with the catalog unless a writer is busy (then the next start does it)."""
    from storage.lock import LockedError, writer_lock

    if not upload_dir.is_dir():
        return []
    try:
        with writer_lock(data_dir, 0.0):
            return UploadStore(upload_dir).reconcile(catalog)
    except LockedError:
        log.debug("upload folder not reconciled: a writer holds the catalog")
    except OSError as exc:
        log.warning("cannot reconcile the upload folder %s: %s", upload_dir, exc)
    return []
