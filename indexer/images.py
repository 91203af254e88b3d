"""Decode an image file or upload into the model's input: RGB, upright, centre-cropped, square.

The same function serves the indexer and the search API, so a query image is prepared
exactly like the indexed ones.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from indexer.decode_cost import DecodeTooCostly, check_decode_cost

# Formats lookalike indexes; anything else is rejected even if Pillow could open it.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"})
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".heic", ".heif",
     ".avif"}
)

# HEIC/HEIF (iPhone photos) through pillow-heif; Pillow reads AVIF itself.
register_heif_opener()

# Pillow's own bomb check would warn or raise with its global limit; ours is per call.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """The bytes are not an image lookalike can use; the message says why.

    `kind` is one of: empty, not_image, unsupported_format, corrupt, too_many_pixels, too_costly
    (far more decoding work than a real image of its size needs).
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8 [size, size, 3]
    width: int  # of the original, after EXIF orientation
    height: int
    format: str


def _check_size(im: Image.Image, max_pixels: int, limit_setting: str) -> None:
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})", "corrupt")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise {limit_setting} to allow it)",
            "too_many_pixels",
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency is composited on white, 16-bit is scaled, CMYK converted."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def _center_square(width: int, height: int, fraction: float = 1.0) -> tuple[float, float, float, float]:
    """The centre square whose side is `fraction` of the shorter side (sub-pixel edges allowed)."""
    side = min(width, height) * fraction
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


@dataclass(frozen=True)
class UprightImage:
    """A decoded image in RGB with its EXIF orientation applied (possibly drafted smaller for JPEG)."""

    image: Image.Image
    width: int  # of the original, after EXIF orientation
    height: int
    format: str


def open_upright(data: bytes, min_side: int, max_pixels: int,
                 limit_setting: str = "indexer.max_image_pixels") -> UprightImage:
    """Decode `data` to an upright RGB image whose shorter side still covers `min_side` when it can.

    Raises ImageRejected for anything that is not a complete, allowed image within `max_pixels`
    (the setting named `limit_setting`, which the message tells people to raise).
    """
    if not data:
        raise ImageRejected("file is empty", "empty")
    try:
        check_decode_cost(data)
    except DecodeTooCostly as exc:
        raise ImageRejected(f"{exc}: far more decoding work than an image needs", "too_costly") from None
    try:
        return _open_upright(data, min_side, max_pixels, limit_setting)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image, or an image format lookalike cannot read", "not_image") from None
    except MemoryError:
        raise ImageRejected("image too large to decode in memory", "too_many_pixels") from None
    except Exception as exc:
        # Pillow's format plugins signal malformed input with many exception types (OSError,
        # SyntaxError, struct.error, RuntimeError from the AVIF/HEIF decoders, ...); each is a rejection.
        raise ImageRejected(f"cannot decode image: {str(exc) or type(exc).__name__}") from None


def _open_upright(data: bytes, min_side: int, max_pixels: int, limit_setting: str) -> UprightImage:
    im: Image.Image = Image.open(io.BytesIO(data))
    fmt = im.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(
            f"format {fmt} is not supported (allowed: {', '.join(sorted(ALLOWED_FORMATS))})", "unsupported_format"
        )
    _check_size(im, max_pixels, limit_setting)
    if fmt in ("JPEG", "MPO"):
        # Decode at the smallest DCT scale that still covers the model input.
        im.draft("RGB", (min_side, min_side))
    im.load()
    im = ImageOps.exif_transpose(im)
    im = _to_rgb(im)
    width, height = im.size
    if fmt in ("JPEG", "MPO"):
        # draft() may have shrunk the image: report the original dimensions.
        width, height = _original_size(data, width, height)
    return UprightImage(im, width, height, fmt)


def decode_side(size: int, crop_fraction: float) -> int:
    """Shorter side an image needs so that its centre crop still covers `size` pixels (for JPEG draft)."""
    return math.ceil(size / crop_fraction - 1e-9)


def model_input(im: Image.Image, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """The model's input: the centre square of side `crop_fraction` x the shorter side, resized to
    `size` x `size`, uint8 [size, size, 3]. model.crop_fraction decides the fraction; indexing and
    queries both come here, so they always see the same region."""
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    box = _center_square(*im.size, crop_fraction)
    square = im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.asarray(square, dtype=np.uint8)


def decode_image(data: bytes, size: int, max_pixels: int,
                 limit_setting: str = "indexer.max_image_pixels", min_side: int = 0,
                 crop_fraction: float = 1.0) -> DecodedImage:
    """Decode `data` to a `size` x `size` RGB array (see model_input for the crop).

    A JPEG is decoded at the smallest scale whose shorter side covers both `min_side` and what the crop
    needs; the indexer's min_side is its thumbnail size, and a query decoded the same way gets the same
    pixels.
    Raises ImageRejected for anything that is not a complete, allowed image within `max_pixels`.
    """
    upright = open_upright(data, max(decode_side(size, crop_fraction), min_side), max_pixels, limit_setting)
    return DecodedImage(model_input(upright.image, size, crop_fraction), upright.width, upright.height, upright.format)


def _original_size(data: bytes, drafted_w: int, drafted_h: int) -> tuple[int, int]:
    """Dimensions before draft(), after EXIF orientation (header read only)."""
    with Image.open(io.BytesIO(data)) as raw:
        w, h = raw.size
        orientation = raw.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return w, h
