"""Fuzz target: `indexer.images.decode_image` may only ever raise ImageRejected.

Every upload and every library file goes through decode_image, so any other exception (or a
crash, or unbounded memory) on some byte string is a bug. `make fuzz` runs an open-ended session
starting from fuzz/corpus (seeds in every allowed format plus what earlier sessions found); the
test suite replays fuzz/corpus and fuzz/regressions (inputs that once failed) deterministically.

The seed images are written into the first corpus directory when it is empty or missing, or into
a temporary one when none is given; `--write-seeds DIR` only writes them. Options are libFuzzer's
(-runs, -max_total_time, -rss_limit_mb, -timeout, -artifact_prefix, ...). Once an input that made
a session fail is fixed, keep it in fuzz/regressions/.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["PIL", "indexer"]):
    from PIL import Image

    from indexer.images import ImageRejected, decode_image

SIZE = 64
MAX_PIXELS = 4_000_000  # keeps every accepted input small enough to decode quickly


def test_one_input(data: bytes) -> None:
    try:
        decoded = decode_image(data, SIZE, MAX_PIXELS)
    except ImageRejected:
        return
    if decoded.pixels.shape != (SIZE, SIZE, 3) or decoded.width * decoded.height > MAX_PIXELS:
        raise AssertionError(f"decode_image returned {decoded.pixels.shape}, {decoded.width}x{decoded.height}")


def seed_images() -> dict[str, bytes]:
    """Tiny images in every allowed format and mode, and a few inputs that must be rejected."""
    gradient = Image.linear_gradient("L").resize((24, 16))
    rgb = Image.merge("RGB", (gradient, gradient.rotate(90), gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    seeds: dict[str, bytes] = {}
    variants = [
        ("jpeg", rgb, {"format": "JPEG", "quality": 70}),
        ("jpeg-progressive", rgb, {"format": "JPEG", "progressive": True}),
        ("png", rgb, {"format": "PNG"}),
        ("png-rgba", rgb.convert("RGBA"), {"format": "PNG"}),
        ("png-palette", rgb.convert("P"), {"format": "PNG"}),
        ("png-16bit", gradient.convert("I;16"), {"format": "PNG"}),
        ("gif", rgb.convert("P"), {"format": "GIF"}),
        ("webp", rgb, {"format": "WEBP", "quality": 50}),
        ("bmp", rgb, {"format": "BMP"}),
        ("tiff", rgb, {"format": "TIFF", "compression": "tiff_lzw"}),
        ("tiff-cmyk", rgb.convert("CMYK"), {"format": "TIFF"}),
        ("heif", rgb, {"format": "HEIF", "quality": 50}),
        ("avif", rgb, {"format": "AVIF", "quality": 50}),
    ]
    for name, image, options in variants:
        buf = io.BytesIO()
        try:
            image.save(buf, **options)
        except (KeyError, OSError, ValueError):  # an encoder this Pillow build lacks
            continue
        seeds[name] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises the orientation path
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", exif=exif.tobytes())
    seeds["jpeg-exif-rotated"] = buf.getvalue()
    seeds["html"] = b"<!doctype html><html><body>not an image</body></html>"
    seeds["svg"] = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    seeds["pdf"] = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"
    return seeds


def write_seeds(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    seeds = seed_images()
    for name, data in seeds.items():
        (directory / name).write_bytes(data)
    return len(seeds)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        print(f"wrote {write_seeds(Path(argv[2]))} seeds to {argv[2]}")
        return
    corpora = [a for a in argv[1:] if not a.startswith("-")]
    if not corpora:
        corpora = [tempfile.mkdtemp(prefix="decode-image-corpus-")]
        argv = [*argv, corpora[0]]
    if not Path(corpora[0]).is_dir() or not any(Path(corpora[0]).iterdir()):
        write_seeds(Path(corpora[0]))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
