from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import encode, png_header_only
from PIL import Image

from indexer import images
from indexer.images import ImageRejected, decode_image

SIZE = 64
LIMIT = 50_000_000


def gradient(w: int = 120, h: int = 80) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def test_rgb_jpeg_is_resized_and_centre_cropped() -> None:
    out = decode_image(encode(gradient(), "JPEG", quality=95), SIZE, LIMIT)
    assert out.pixels.shape == (SIZE, SIZE, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height, out.format) == (120, 80, "JPEG")
    # The centre crop drops 20 columns on each side: the left edge is no longer pure black in red.
    assert out.pixels[:, 0, 0].mean() > 30
    assert abs(int(out.pixels[:, SIZE // 2, 0].mean()) - 127) < 10


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_lossless_formats_agree(fmt: str) -> None:
    img = Image.new("RGB", (70, 70), (200, 100, 50))
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(img, fmt, **kwargs), SIZE, LIMIT)
    assert out.format == fmt
    assert np.abs(out.pixels.astype(int) - [200, 100, 50]).max() <= 3


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_formats_heic_and_avif(fmt: str) -> None:
    img = Image.new("RGB", (90, 60), (200, 100, 50))
    img.paste((20, 40, 220), (0, 0, 45, 60))  # blue left half
    out = decode_image(encode(img, fmt, quality=95), SIZE, LIMIT)
    assert out.format == fmt and (out.width, out.height) == (90, 60)
    left, right = out.pixels[:, 5].astype(int).mean(0), out.pixels[:, -5].astype(int).mean(0)
    assert np.abs(left - [20, 40, 220]).max() < 25 and np.abs(right - [200, 100, 50]).max() < 25


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 40, 20))
    out = decode_image(encode(rgba, "PNG"), SIZE, LIMIT).pixels
    assert tuple(out[5, 32]) == (0, 0, 255)
    assert tuple(out[60, 32]) == (255, 255, 255)


def test_palette_with_transparency_and_greyscale_alpha() -> None:
    pal = Image.new("P", (30, 30), 0)
    pal.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    out = decode_image(encode(pal, "PNG", transparency=0), SIZE, LIMIT).pixels
    assert tuple(out[10, 10]) == (255, 255, 255)
    la = Image.new("LA", (30, 30), (0, 255))
    assert tuple(decode_image(encode(la, "PNG"), SIZE, LIMIT).pixels[3, 3]) == (0, 0, 0)


def test_greyscale_cmyk_and_16_bit() -> None:
    grey = decode_image(encode(Image.new("L", (50, 50), 90), "PNG"), SIZE, LIMIT).pixels
    assert np.all(grey == 90)
    cmyk = decode_image(encode(Image.new("CMYK", (50, 50), (0, 255, 255, 0)), "JPEG", quality=100), SIZE, LIMIT)
    r, g, b = cmyk.pixels[32, 32].astype(int)
    assert r > 200 and g < 60 and b < 60
    sixteen = Image.fromarray(np.full((40, 40), 65535 // 2, np.uint16))
    assert abs(int(decode_image(encode(sixteen, "PNG"), SIZE, LIMIT).pixels[5, 5, 0]) - 128) <= 1


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    px = decode_image(buf.getvalue(), SIZE, LIMIT).pixels
    assert px[20, 20, 0] > 200 and px[20, 20, 2] < 50


# How a camera stores an upright picture for each EXIF orientation (the inverse of what a viewer applies).
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    if fmt == "TIFF":  # TIFF keeps orientation as its own tag
        return encode(image, fmt, tiffinfo={0x0112: orientation})
    exif = Image.Exif()
    exif[0x0112] = orientation
    lossy = {"quality": 95} if fmt in ("JPEG", "WEBP", "HEIF", "AVIF") else {}
    return encode(image, fmt, exif=exif.tobytes(), **lossy)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "HEIF", "AVIF"])
@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_every_exif_orientation_gives_the_upright_pixels(orientation: int, fmt: str) -> None:
    upright = Image.new("RGB", (60, 100), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 60, 30))  # red band on top
    upright.paste((0, 255, 0), (0, 30, 20, 100))  # green band on the left
    transform = STORED_AS[orientation]
    stored = upright.transpose(transform) if transform is not None else upright
    out = decode_image(_with_orientation(stored, fmt, orientation), SIZE, LIMIT)
    plain = decode_image(encode(upright, "PNG"), SIZE, LIMIT)
    assert (out.width, out.height) == (60, 100)
    error = np.abs(out.pixels.astype(int) - plain.pixels.astype(int)).mean()
    assert error == 0 if fmt in ("PNG", "TIFF") else error < 4


def test_large_jpeg_reports_original_size_after_draft() -> None:
    out = decode_image(encode(gradient(1600, 1200), "JPEG"), SIZE, LIMIT)
    assert (out.width, out.height) == (1600, 1200)
    assert out.pixels.shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (b"<html><body>hello</body></html>", "not_image"),
        (b"%PDF-1.4 fake", "not_image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not_image"),
        (encode(gradient(), "JPEG")[:400], "corrupt"),
        (encode(gradient(), "PNG")[:200], "corrupt"),
        (png_header_only(100_000, 100_000), "too_many_pixels"),
        (encode(Image.new("RGB", (16, 16)), "ICO"), "unsupported_format"),
    ],
    ids=["empty", "html", "pdf", "svg", "truncated-jpeg", "truncated-png", "png-bomb", "ico"],
)
def test_rejections_say_why(data: bytes, kind: str) -> None:
    with pytest.raises(ImageRejected) as err:
        decode_image(data, SIZE, LIMIT)
    assert err.value.kind == kind
    assert str(err.value)


def test_a_decoder_error_without_a_message_is_named_by_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's plugins raise bare errors too (struct.error(), RuntimeError()); the rejection must still say what.
    def fail(*_args: object) -> None:
        raise RuntimeError()

    monkeypatch.setattr(images, "_open_upright", fail)
    with pytest.raises(ImageRejected, match=r"^cannot decode image: RuntimeError$"):
        decode_image(encode(gradient(), "PNG"), SIZE, LIMIT)


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, SIZE, 10_000).pixels.shape == (SIZE, SIZE, 3)
    with pytest.raises(ImageRejected, match="10,000 pixels, over the limit of 9,999"):
        decode_image(data, SIZE, 9_999)


def test_very_wide_panorama_is_centre_cropped_from_a_draft() -> None:
    pano = Image.new("RGB", (12000, 800), (30, 30, 200))
    pano.paste((220, 40, 40), (5600, 0, 6400, 800))  # a red square in the middle
    out = decode_image(encode(pano, "JPEG", quality=90), SIZE, LIMIT)
    assert (out.width, out.height) == (12000, 800)
    assert np.abs(out.pixels[SIZE // 2, SIZE // 2].astype(int) - [220, 40, 40]).max() < 30
