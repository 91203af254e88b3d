"""bench/overlay_bands.py: bars laid over a photo are cut out, a photo without bars is left alone."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from bench.overlay_bands import without_bands


def photo(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    """Mid-tone noise: nothing in it is near-white or near-black."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(60, 190, (height, width, 3), dtype=np.uint8), "RGB")


def test_white_bars_with_text_are_cut_out() -> None:
    image = photo()
    draw = ImageDraw.Draw(image)
    for top in (10, 90, 160):
        draw.rectangle((0, top, 299, top + 30), fill="white")
        draw.text((20, top + 8), "WHEN THE BENCH FINALLY RUNS", fill="black", font_size=14)
    cut = without_bands(image)
    assert cut is not None and cut.width == 300
    # What is left is the photo's rows: no bar pixel survives, and little of the photo is lost.
    left = np.asarray(cut)
    assert (left.min(-1) >= 225).mean() < 0.01
    assert 200 - 3 * 31 - 8 <= cut.height <= 200 - 3 * 31


def test_side_bars_go_too_and_a_plain_photo_stays() -> None:
    framed = Image.new("RGB", (400, 200), "black")
    framed.paste(photo(240, 200), (80, 0))
    cut = without_bands(framed)
    assert cut is not None and 236 <= cut.width <= 240 and cut.height == 200
    assert without_bands(photo()) is None
    thin = photo()
    ImageDraw.Draw(thin).rectangle((0, 100, 299, 103), fill="white")  # a 2% line is not a bar
    assert without_bands(thin) is None
