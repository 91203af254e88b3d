"""Files outside the library are never served: the real symlink race on /file and /thumbnail.

One thread keeps swapping an indexed file between a symbolic link to a photo outside the
library and the real file (each swap one atomic rename, as an attacker with write access to a
library folder would do); other threads keep asking for the file and for its thumbnail (the
cached thumbnail deleted before each request, so it is made from the file every time). Not one
byte from outside may be served or cached, and no request may fail with a 500.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from helpers import GREEN, catalog_of, colour_image, jpeg
from PIL import Image

from indexer.settings import Settings
from indexer.thumbnails import thumbnail_path

RACE_SECONDS = 1.5  # per route


class _Swapper:
    """Swaps `target` between a link to `outside` and a real copy of `original`, until stopped."""

    def __init__(self, target: Path, outside: Path, original: bytes) -> None:
        self.target, self.outside, self.original = target, outside, original
        self.stop = threading.Event()
        self.swaps = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            link = self.target.with_name(f".link{self.swaps}")
            os.symlink(self.outside, link)
            os.replace(link, self.target)
            real = self.target.with_name(f".real{self.swaps}")
            real.write_bytes(self.original)
            os.replace(real, self.target)
            self.swaps += 1

    def __enter__(self) -> _Swapper:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.target.unlink()
        self.target.write_bytes(self.original)


def _is_green(webp: bytes) -> bool:
    red, green, _ = np.asarray(Image.open(io.BytesIO(webp)).convert("RGB"), np.float64).mean(axis=(0, 1))
    return green > red


@pytest.mark.slow
def test_symlink_swaps_never_serve_or_cache_a_file_outside_the_library(
    client: FlaskClient, indexed: Settings, colour_library: Path, tmp_path: Path
) -> None:
    target = (colour_library / "red" / "red0.jpg").resolve()
    original = target.read_bytes()
    outside = tmp_path / "outside" / "private.jpg"
    outside.parent.mkdir()
    outside.write_bytes(jpeg(colour_image(GREEN, seed=5)))
    outside_bytes = outside.read_bytes()
    catalog = catalog_of(indexed)
    image_id = catalog.image_id_for_path(str(target))
    assert image_id is not None
    (record,) = catalog.get_images([image_id]).values()
    cached = thumbnail_path(indexed.storage.data_dir, record.content_hash)

    tried = leaked = errors = served = garbled = 0
    with _Swapper(target, outside, original):
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            response = client.get(f"/api/v1/images/{image_id}/file")
            tried += 1
            errors += response.status_code >= 500
            if response.status_code == 200:
                served += 1
                leaked += response.data == outside_bytes
                garbled += response.data not in (original, outside_bytes)
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            cached.unlink(missing_ok=True)
            response = client.get(f"/api/v1/images/{image_id}/thumbnail")
            tried += 1
            errors += response.status_code >= 500
            if response.status_code == 200:
                served += 1
                leaked += _is_green(response.data)
            if cached.is_file():
                leaked += _is_green(cached.read_bytes())
    print(f"\nraces tried: {tried}, answered 200: {served}, outside bytes served: {leaked}, 500s: {errors}")
    assert leaked == 0 and errors == 0 and garbled == 0
    assert served > 0  # the real file was served between the swaps
    response = client.get(f"/api/v1/images/{image_id}/file")
    assert response.status_code == 200 and response.data == original
