"""A small library of real photos (shipped inside scikit-image and scikit-learn) for demos and tests.

Each photo is written as a JPEG, plus two variants (mirrored, and a cropped PNG) so that
"find similar" has real neighbours to find.
"""

from __future__ import annotations

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
        photos[filename.removesuffix(".jpg")] = lambda f=filename: load_sample_image(f)
    return photos


def build_sample_library(target: Path) -> list[Path]:
    """Write the sample photos and their variants under `target`; returns the files written."""
    written: list[Path] = []
    (target / "photos").mkdir(parents=True, exist_ok=True)
    (target / "variants").mkdir(parents=True, exist_ok=True)
    for name, load in _photos().items():
        image = Image.fromarray(np.asarray(load())).convert("RGB")
        original = target / "photos" / f"{name}.jpg"
        image.save(original, quality=92)
        mirrored = target / "variants" / f"{name}-mirrored.jpg"
        ImageOps.mirror(image).save(mirrored, quality=85)
        w, h = image.size
        cropped = target / "variants" / f"{name}-cropped.png"
        image.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(cropped)
        written += [original, mirrored, cropped]
    log.info("wrote %d sample images to %s", len(written), target)
    return written
