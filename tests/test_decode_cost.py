"""Files that cost far more to decode than their size says are refused before a decoder sees them,
and real images, animated and progressive ones included, are not."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from helpers import (
    RED,
    colour_image,
    encode,
    jpeg,
    jpeg_scan_bomb,
    jpeg_segments,
    png_chunk,
    png_text_bomb,
)
from PIL import Image, PngImagePlugin

from indexer.decode_cost import MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS
from indexer.images import ImageRejected, decode_image

# On the decoder as it was, each of these took seconds of CPU (see indexer.decode_cost).
SMALL_PNG = encode(colour_image(RED, (64, 64)), "PNG")
AT_IDAT = SMALL_PNG.index(b"IDAT") - 4
SMALL_JPEG = jpeg(colour_image(RED, (64, 64)))


def costly() -> dict[str, bytes]:
    return {
        "png-text-before-pixels": png_text_bomb(31_000_000),
        "png-text-after-pixels": SMALL_PNG[:-12] + png_chunk(b"tEXt", b"k\x00v") * 1_500_000 + SMALL_PNG[-12:],
        "png-empty-image-data": SMALL_PNG[:AT_IDAT] + png_chunk(b"IDAT", b"") * 2_000_000 + SMALL_PNG[AT_IDAT:],
        "jpeg-comments": SMALL_JPEG[:2] + b"\xff\xfe\x00\x03x" * 3_000_000 + SMALL_JPEG[2:],
        "jpeg-app-segments": SMALL_JPEG[:2] + b"\xff\xe2\x00\x03x" * 3_000_000 + SMALL_JPEG[2:],
        "jpeg-repeated-scans": jpeg_scan_bomb(7000, 50),
    }


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return costly()


COSTLY = ["png-text-before-pixels", "png-text-after-pixels", "png-empty-image-data", "jpeg-comments",
          "jpeg-app-segments", "jpeg-repeated-scans"]


@pytest.mark.parametrize("name", COSTLY)
def test_costly_files_are_refused_before_decoding(bombs: dict[str, bytes], name: str) -> None:
    started = time.process_time()
    with pytest.raises(ImageRejected) as rejected:
        decode_image(bombs[name], 64, 50_000_000, "api.max_upload_pixels")
    assert rejected.value.kind == "too_costly"
    assert "far more decoding work" in str(rejected.value)
    assert time.process_time() - started < 0.5


def progressive_jpeg_with_scans(scans_each: int) -> bytes:
    data = encode(colour_image(RED, (256, 256)), "JPEG", quality=90, progressive=True)
    return b"\xff\xd8" + b"".join(body * (scans_each if marker == 0xDA else 1)
                                  for marker, body in jpeg_segments(data))


def test_limits_sit_well_above_real_images() -> None:
    progressive = encode(colour_image(RED, (640, 480)), "JPEG", quality=90, progressive=True)
    assert 5 < sum(1 for marker, _ in jpeg_segments(progressive) if marker == 0xDA) < MAX_JPEG_SCANS / 4
    decode_image(progressive, 64, 50_000_000)
    assert decode_image(progressive_jpeg_with_scans(6), 64, 50_000_000).pixels.shape == (64, 64, 3)
    with pytest.raises(ImageRejected, match="more than 64 scans"):
        decode_image(progressive_jpeg_with_scans(7), 64, 50_000_000)
    # A photo with EXIF, an ICC profile split over many segments and a comment.
    icc = bytes(range(256)) * 4096  # 1 MB: 17 APP2 segments
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = encode(colour_image(RED, (320, 240)), "JPEG", icc_profile=icc, exif=exif, comment=b"holiday")
    assert 20 < sum(1 for marker, _ in jpeg_segments(photo) if marker != 0xDA) < MAX_JPEG_SEGMENTS / 10
    assert decode_image(photo, 64, 50_000_000).height == 320  # upright
    # A PNG with text chunks, and an animated PNG of 40 frames.
    info = PngImagePlugin.PngInfo()
    for i in range(50):
        info.add_text(f"key{i}", "value" * 20)
    decode_image(encode(colour_image(RED, (80, 60)), "PNG", pnginfo=info), 64, 50_000_000)
    frames = [Image.fromarray(np.full((60, 80, 3), i * 6, np.uint8)) for i in range(40)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), 64, 50_000_000).pixels.mean() < 1  # the first, black frame
