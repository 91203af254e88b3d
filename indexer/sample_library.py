"""A small library of real photos (shipped inside scikit-image and scikit-learn) for demos and tests.

Each of the 14 photos is written as a JPEG, plus two variants (mirrored, and a cropped PNG) so
that "find similar" has real neighbours to find: 42 files in all. A file that already holds the
same bytes is left alone, so building the library again changes nothing an indexer would notice.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field",
    "immunohistochemistry", "retina", "coins", "moon", "brick", "grass",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _photos() -> dict[str, Callable[[], np.ndarray]]:
    try:
        import skimage.data
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise RuntimeError(
            "the sample library needs scikit-image and scikit-learn: pip install 'lookalike[demo]'"
        ) from exc
    photos: dict[str, Callable[[], np.ndarray]] = {name: getattr(skimage.data, name) for name in SKIMAGE_PHOTOS}
    for filename in SKLEARN_PHOTOS:
        photos[filename.removesuffix(".jpg")] = functools.partial(load_sample_image, filename)
    return photos


def _save_if_changed(image: Image.Image, path: Path, fmt: str, **options: object) -> bool:
    """Write `image` to `path` unless the file already holds exactly these bytes; True when written."""
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    data = buf.getvalue()
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.write_bytes(data)
    return True


def build_sample_library(target: Path) -> list[Path]:
    """Write the sample photos and their variants under `target`; returns every file of the library.

    Files that already hold the right bytes are not rewritten (their modification time stays).
    """
    files: list[Path] = []
    (target / "photos").mkdir(parents=True, exist_ok=True)
    (target / "variants").mkdir(parents=True, exist_ok=True)
    written = 0
    for name, load in _photos().items():
        image = Image.fromarray(np.asarray(load())).convert("RGB")
        w, h = image.size
        variants = [
            (image, target / "photos" / f"{name}.jpg", "JPEG", {"quality": 92}),
            (ImageOps.mirror(image), target / "variants" / f"{name}-mirrored.jpg", "JPEG", {"quality": 85}),
            (image.crop((w // 10, h // 10, w - w // 10, h - h // 10)), target / "variants" / f"{name}-cropped.png",
             "PNG", {}),
        ]
        for variant, path, fmt, options in variants:
            written += _save_if_changed(variant, path, fmt, **options)
            files.append(path)
    log.info("sample library in %s: %d files, %d written", target, len(files), written)
    return files
