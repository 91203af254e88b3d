"""A labelled folder tree for bench/custom_labels.py, from photos and datasets that ship with the demo extra.

    python bench/label_tree.py build/label-tree

Each sub-folder is a label; folders whose names start with "_" hold unlabelled background
images. Three kinds of label, because they are three kinds of use:

- object-<photo>: 30 views of one real photo (scikit-image, scikit-learn): random crops, turns,
  flips, colour and light changes, blur and re-compression. "This exact thing again", like the
  gas meter photographed on another day.
- digit-<n>: 50 handwritten digits of one kind (scikit-learn's digits, 8x8 scans of 43 writers)
  as ink on paper. A category with real variation between its members.
- face: 100 face crops of Labeled Faces in the Wild (scikit-image's lfw_subset); its 100 non-face
  crops of the same photos go to _background, as hard negatives.

The tree is deterministic (fixed seeds); building it again rewrites the same files.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OBJECT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
                 "retina", "coins", "moon", "brick", "grass", "gravel", "cell", "clock")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
VIEWS_PER_OBJECT = 30
DIGITS_PER_CLASS = 50


def _object_photos() -> dict[str, Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = {name: Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB") for name in OBJECT_PHOTOS}
    for filename in SKLEARN_PHOTOS:
        photos[filename.removesuffix(".jpg")] = Image.fromarray(load_sample_image(filename)).convert("RGB")
    return photos


def random_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another photo of the same thing: crop, turn, mirror, light, colour, blur and size all change."""
    w, h = image.size
    area = rng.uniform(0.35, 0.9) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = image.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    view = view.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR, expand=False)
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.3))
    view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.7, 1.3))
    view = ImageEnhance.Color(view).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.3:
        view = view.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    side = int(rng.integers(200, 480))
    scale = side / max(view.size)
    return view.resize((max(8, int(view.width * scale)), max(8, int(view.height * scale))), Image.Resampling.LANCZOS)


def _ink(gray: np.ndarray, rng: np.random.Generator, side: int) -> Image.Image:
    """A small grey-level scan (0 = paper) as dark ink on light paper, enlarged."""
    paper = np.array([rng.uniform(220, 250)] * 3)
    ink = np.array([rng.uniform(10, 60), rng.uniform(10, 60), rng.uniform(40, 120)])
    level = (gray / max(gray.max(), 1e-6))[..., None]
    rgb = (paper * (1 - level) + ink * level).astype(np.uint8)
    image = Image.fromarray(rgb).resize((side, side), Image.Resampling.BICUBIC)
    return ImageOps.expand(image, border=side // 6, fill=tuple(int(v) for v in paper))


def _jpeg(image: Image.Image, path: Path, quality: int) -> None:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    path.write_bytes(buf.getvalue())


def build_tree(target: Path, seed: int = 0) -> dict[str, int]:
    """Write the tree under `target`; returns images per folder."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}

    def folder(name: str) -> Path:
        path = target / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    for name, photo in _object_photos().items():
        out = folder(f"object-{name}")
        for i in range(VIEWS_PER_OBJECT):
            _jpeg(random_view(photo, rng), out / f"{name}-{i:02d}.jpg", int(rng.integers(60, 95)))
        counts[out.name] = VIEWS_PER_OBJECT

    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in range(10):
        out = folder(f"digit-{digit}")
        chosen = np.flatnonzero(digits.target == digit)[:DIGITS_PER_CLASS]
        for i, index in enumerate(chosen):
            _jpeg(_ink(digits.images[index], rng, int(rng.integers(96, 200))), out / f"digit{digit}-{i:02d}.jpg", 90)
        counts[out.name] = len(chosen)

    import skimage.data

    faces = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy")  # 100 faces, then 100 non-faces
    for name, rows in (("face", faces[:100]), ("_background", faces[100:])):
        out = folder(name)
        for i, crop in enumerate(rows):
            gray = Image.fromarray((crop * 255).astype(np.uint8)).convert("RGB")
            _jpeg(gray.resize((160, 160), Image.Resampling.BICUBIC), out / f"{name.strip('_')}-{i:03d}.jpg", 92)
        counts[out.name] = len(rows)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    counts = build_tree(args.target)
    print(f"{args.target}: {sum(counts.values())} images, {sum(not k.startswith('_') for k in counts)} labels")


if __name__ == "__main__":
    main()
