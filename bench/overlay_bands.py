"""An experiment: find white (or black) bars laid over a photo and cut them out.

Caption bars and meme text cover large full-width strips of a photo; the model's pooled features
then describe the bars as much as the photo, and the original is often not the nearest neighbour.
`without_bands` removes full-width (or full-height) strips that are mostly near-white or near-black,
text inside them included, so the rest can be embedded as a second query. bench/crop_quality.py
`--strip-bands` measures it; the product does not use it (see bench/README.md for why and what).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

LIGHT, DARK = 225, 30  # every channel at least / at most this: a bar's pixel
SHARE = 0.35  # a band row has at least this share of bar pixels...
EDGE_SHARE = 0.8  # ...and bar pixels at both ends of the row (bars span the image)
MIN_BAND = 0.03  # bands thinner than this share of the side are left alone
MAX_GAP = 0.08  # text lines inside a bar: gaps this short between band rows, still this light...
GAP_LIGHT = 0.25  # ...are part of the bar
MIN_REMOVED, MIN_LEFT = 0.10, 0.30  # act only when bands cover 10% or more, and 30% of the side stays
PROBE = 256  # detection runs on a thumbnail of this size


def _band_rows(rows: np.ndarray) -> np.ndarray:
    """Per row of an RGB array [n, m, 3], whether it belongs to a bar."""
    edge = max(1, rows.shape[1] // 30)
    mask = np.zeros(len(rows), bool)
    light = np.zeros(len(rows))
    for tone in (rows.min(-1) >= LIGHT, rows.max(-1) <= DARK):
        share = tone.mean(1)
        ends = (tone[:, :edge].mean(1) >= EDGE_SHARE) & (tone[:, -edge:].mean(1) >= EDGE_SHARE)
        mask |= (share >= SHARE) & ends
        light = np.maximum(light, share)
    marked = np.flatnonzero(mask)
    for lo, hi in zip(marked[:-1], marked[1:], strict=False):
        if 1 < hi - lo <= MAX_GAP * len(rows) and light[lo + 1:hi].mean() >= GAP_LIGHT:
            mask[lo + 1:hi] = True
    band = np.zeros(len(rows), bool)
    start = None
    for i, value in enumerate([*mask, False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - start >= max(2, int(MIN_BAND * len(rows))):
                band[max(0, start - 1):i + 1] = True  # with the anti-aliased row on each side
            start = None
    return band


def without_bands(image: Image.Image) -> Image.Image | None:
    """`image` with its bar-like bands cut out (rows first, then columns), or None when it has none."""
    pixels = np.asarray(image.convert("RGB"))
    changed = False
    for axis in (0, 1):
        probe = Image.fromarray(pixels)
        probe.thumbnail((PROBE, PROBE))
        small = np.asarray(probe, np.int16)
        band = _band_rows(small if axis == 0 else small.transpose(1, 0, 2))
        if band.mean() < MIN_REMOVED or band.mean() > 1 - MIN_LEFT:
            continue
        full = pixels.shape[axis]
        keep = ~band[np.minimum(np.arange(full) * len(band) // full, len(band) - 1)]
        pixels = pixels[keep] if axis == 0 else pixels[:, keep]
        changed = True
    return Image.fromarray(np.ascontiguousarray(pixels)) if changed else None
