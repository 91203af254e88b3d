"""open_beneath: a library file is reached from its root without following any link and without
blocking, and only a regular file is ever opened."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from indexer.library_files import (
    MISSING,
    NOT_A_FILE,
    OUTSIDE,
    LibraryFileError,
    open_beneath,
    read_library_file,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    (lib / "sub" / "deeper").mkdir(parents=True)
    (lib / "sub" / "deeper" / "photo.jpg").write_bytes(b"inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "photo.jpg").write_bytes(b"outside")
    return lib


def _refused(root: Path, path: str) -> LibraryFileError:
    with pytest.raises(LibraryFileError) as caught:
        os.close(open_beneath(str(root), path))
    return caught.value


def test_a_regular_file_below_the_root_is_opened(root: Path) -> None:
    read = read_library_file(str(root), str(root / "sub" / "deeper" / "photo.jpg"))
    assert read.data == b"inside" and read.stat.st_size == 6


def test_links_on_any_component_are_never_followed(root: Path, tmp_path: Path) -> None:
    (root / "link.jpg").symlink_to(tmp_path / "outside" / "photo.jpg")
    assert _refused(root, str(root / "link.jpg")).kind == NOT_A_FILE
    # A folder on the way replaced by a link to a folder outside (same name below it).
    os.rename(root / "sub" / "deeper", root / "sub" / "moved")
    (root / "sub" / "deeper").symlink_to(tmp_path / "outside")
    error = _refused(root, str(root / "sub" / "deeper" / "photo.jpg"))
    assert error.kind == NOT_A_FILE and "symbolic link" in error.reason
    # A link inside the library, to a file inside the library, is not followed either.
    (root / "inner-link.jpg").symlink_to(root / "sub" / "moved" / "photo.jpg")
    assert _refused(root, str(root / "inner-link.jpg")).kind == NOT_A_FILE


def test_fifos_sockets_and_folders_are_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "fifo.jpg")
    error = _refused(root, str(root / "fifo.jpg"))
    assert error.kind == NOT_A_FILE and "FIFO" in error.reason
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "sock.jpg"))
        assert _refused(root, str(root / "sock.jpg")).kind == NOT_A_FILE
    assert _refused(root, str(root / "sub")).kind == NOT_A_FILE


def test_missing_and_outside_paths(root: Path, tmp_path: Path) -> None:
    assert _refused(root, str(root / "nothing.jpg")).kind == MISSING
    assert _refused(root, str(root / "sub" / "deeper" / "photo.jpg" / "x.jpg")).kind == MISSING
    for path in (str(tmp_path / "outside" / "photo.jpg"), str(root) + "-sibling/photo.jpg",
                 str(root / "sub" / ".." / ".." / "outside" / "photo.jpg"), str(root) + "/sub//x.jpg",
                 str(root)):
        assert _refused(root, path).kind == OUTSIDE, path

