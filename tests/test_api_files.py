"""/file and /thumbnail: ETags tied to the content hash, relative data dirs, and each way a thumbnail
can fail told apart (file gone, file changed, cannot decode, cannot cache: served from memory)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from helpers import (
    CATALOG_MODEL,
    assert_problem,
    catalog_of,
    env_for,
    free_port,
    make_colour_library,
    run_index,
    unit,
    wait_ready,
)
from PIL import Image

from indexer.settings import Settings, load_settings
from indexer.thumbnails import thumbnail_path
from search_api import create_app
from storage.catalog import FileRef, NewImage


def _first(client: FlaskClient, name: str = "red0.jpg") -> dict:
    for image_id in range(1, 100):
        meta = client.get(f"/api/v1/images/{image_id}").get_json()
        if meta and meta["path"].endswith(name):
            return meta
    raise AssertionError(f"{name} is not indexed")


def test_file_and_thumbnail_etags_follow_the_content_hash(client: FlaskClient, indexed: Settings) -> None:
    meta = _first(client)
    response = client.get(meta["file_url"])
    assert response.status_code == 200 and response.headers["ETag"] == f'"{meta["content_hash"]}"'
    assert response.headers["Content-Length"] == str(len(response.data)) and response.headers["Last-Modified"]
    again = client.get(meta["file_url"], headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    part = client.get(meta["file_url"], headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.data == response.data[:10]

    thumb = client.get(meta["thumbnail_url"])
    assert thumb.status_code == 200 and meta["content_hash"] in thumb.headers["ETag"]
    assert client.get(meta["thumbnail_url"], headers={"If-None-Match": thumb.headers["ETag"]}).status_code == 304

    # Touched since it was indexed: the bytes may differ from the indexed ones, so the tag is weak and new.
    path = Path(meta["path"])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    touched = client.get(meta["file_url"], headers={"If-None-Match": response.headers["ETag"]})
    assert touched.status_code == 200 and touched.headers["ETag"].startswith('W/"')
    assert touched.headers["ETag"] != response.headers["ETag"]


def test_thumbnail_failures_are_told_apart_and_logged(
    client: FlaskClient, indexed: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    meta = _first(client)
    path, cached = Path(meta["path"]), thumbnail_path(indexed.storage.data_dir, meta["content_hash"])
    original = path.read_bytes()

    # Other bytes of the same size: no thumbnail from them, and nothing cached.
    cached.unlink()
    path.write_bytes(bytes(b ^ 0xFF for b in original[:-2]) + original[-2:])
    assert_problem(client.get(meta["thumbnail_url"]), 404, "file_changed", "changed since it was indexed")
    assert not cached.exists() and "changed since it was indexed" in caplog.text

    # A catalog image whose (hash-matching) file cannot be decoded.
    garbage = path.with_name("garbage.jpg")
    garbage.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 10)
    catalog = catalog_of(indexed)
    digest = hashlib.sha256(garbage.read_bytes()).hexdigest()
    root = str(next(p for p in path.parents if str(p) in catalog.roots()))
    (image_id,), _ = catalog.apply(new_images=[NewImage(digest, 1, 1, "JPEG", CATALOG_MODEL, unit(1), ())],
                                   files=[FileRef(str(garbage), root, garbage.stat().st_size, 1, digest)])
    catalog.close()
    assert_problem(client.get(f"/api/v1/images/{image_id}/thumbnail"), 422, "file_undecodable", "cannot decode")
    assert "cannot decode" in caplog.text

    # The cache cannot be written (the thumbnails folder is a file here): served from memory, logged.
    path.write_bytes(original)
    thumbnails = indexed.storage.data_dir / "thumbnails"
    os.rename(thumbnails, thumbnails.with_name("thumbnails.moved"))
    thumbnails.write_bytes(b"")
    caplog.clear()
    response = client.get(meta["thumbnail_url"])
    assert response.status_code == 200 and response.mimetype == "image/webp"
    assert Image.open(io.BytesIO(response.data)).format == "WEBP"
    assert "serving it from memory" in caplog.text

    # Gone.
    path.unlink()
    assert_problem(client.get(meta["thumbnail_url"]), 404, "file_missing")
    assert_problem(client.get(meta["file_url"]), 404, "file_missing")


def test_relative_data_dir_serves_thumbnails(tmp_path: Path, tf1_module: Path, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    library = make_colour_library(tmp_path / "library")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config_file=None, environ={}, overrides={
        "model": {"handle": str(tf1_module), "image_size": 64, "batch_size": 4},
        "storage": {"data_dir": "data"},
        "indexer": {"decode_workers": 2, "decode_in_processes": False, "thumbnail_size": 0}})
    run_index(settings, library)
    client = create_app(settings).test_client()
    meta = _first(client)
    monkeypatch.chdir(tmp_path / "library")  # where the server runs from later does not matter
    for _ in range(2):  # made on request, then from the cache
        response = client.get(meta["thumbnail_url"])
        assert response.status_code == 200, response.get_data(as_text=True)
    assert (tmp_path / "data" / "thumbnails").is_dir()
    assert settings.storage.data_dir == tmp_path / "data"  # made absolute once, at load


@pytest.mark.gunicorn
def test_serve_from_a_folder_with_a_relative_data_dir(tmp_path: Path, tf1_module: Path) -> None:
    library = make_colour_library(tmp_path / "library")
    (tmp_path / "config.yaml").write_text("storage:\n  data_dir: data\nindexer:\n  thumbnail_size: 0\n")
    env = {**os.environ, **env_for(Path("unused"), tf1_module), "PYTHONPATH": str(Path(__file__).parent.parent)}
    del env["LOOKALIKE_STORAGE__DATA_DIR"], env["LOOKALIKE_CONFIG"]
    subprocess.run([sys.executable, "-m", "lookalike", "index", str(library)], env=env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--port", str(port)], env=env,
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, base)
        with urllib.request.urlopen(f"{base}/api/v1/images/1/thumbnail", timeout=30) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/webp"
            assert Image.open(io.BytesIO(response.read())).format == "WEBP"
        assert list((tmp_path / "data" / "thumbnails").glob("*/*.webp"))
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/api/v1/images/999/thumbnail", timeout=30)
        assert missing.value.code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

