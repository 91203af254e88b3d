"""Label accuracy and near-duplicate recall for each model.crop_fraction, with a real ImageNet model.

    python bench/crop_quality.py --model /path/to/efficientnet_lite0_tf1 [--crops 1.0,auto]
    python bench/crop_quality.py --model DIR --photos IMAGENET_VAL_DIR [--limit 2000]

Labels: top-1 and top-5 accuracy on photos whose ImageNet class is known. Without --photos these
are the few photos that scikit-image and scikit-learn ship, with the classes assigned by hand
below (a set where ImageNet itself has near-synonyms, as the ReaL relabelling of ImageNet does);
with --photos, a folder of sub-folders named by WordNet id (n01440764) or class number, as
ImageNet's validation set is usually laid out.

Near-duplicates: every sample photo is indexed (as a JPEG) and queried with edited copies: mild
edits (re-compression, downscaling, light), heavy ones (crops to 70% and 50%, mirror, rotation,
borders, letterboxing) and overlays (white bars, with and without text, as in memes and
screenshots). recall@1: the original is the nearest neighbour among all indexed photos.

Preprocessing is the product's own (indexer.images.decode_image), so the figures are those of
lookalike's stored labels and of its searches.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.images import decode_image, decode_side, model_input, open_upright  # noqa: E402
from indexer.settings import eval_crop_fraction  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MAX_PIXELS = 10**9

# Hand-assigned ImageNet classes of the shipped photos that show an ImageNet object (0-based ids).
LABELLED = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat: ImageNet's cat classes overlap
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744},  # missile, projectile
    "camera": {872, 759},  # tripod, reflex camera (the cameraman's)
    "motorcycle_left": {665, 670},  # moped, motor scooter: ImageNet's motorcycles
    "china": {698, 663},  # palace, monastery (the Summer Palace's tower)
}
# Indexed for the near-duplicate queries: every shipped photo, labelled or not.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
                  "retina", "coins", "moon", "brick", "grass", "gravel", "cell", "clock", "motorcycle_left",
                  "colorwheel", "page", "text", "horse", "logo")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def sample_photos() -> dict[str, Image.Image]:
    try:
        import skimage.data
        from sklearn.datasets import load_sample_image
    except ImportError:
        raise SystemExit("the sample photos need scikit-image and scikit-learn: pip install -e '.[demo]'") from None

    def rgb(array: np.ndarray) -> Image.Image:
        array = np.asarray(array)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        return Image.fromarray(array).convert("RGB")

    photos = {}
    for name in SKIMAGE_PHOTOS:
        shipped = Path(skimage.data.__file__).parent / f"{name}.png"  # in the package, without a loader
        try:
            photos[name] = rgb(getattr(skimage.data, name)()) if hasattr(skimage.data, name) else \
                Image.open(shipped).convert("RGB")
        except Exception as exc:  # a photo scikit-image would have to download: go on without it
            print(f"skipping skimage.data.{name}: {exc}", file=sys.stderr)
    for filename in SKLEARN_PHOTOS:
        photos[filename.removesuffix(".jpg")] = rgb(load_sample_image(filename))
    return photos


def encoded(image: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --- edits -------------------------------------------------------------------------------------


def crop_to(fraction: float, corner: bool = False) -> Callable[[Image.Image], Image.Image]:
    def edit(image: Image.Image) -> Image.Image:
        w, h = image.size
        cw, ch = int(w * fraction), int(h * fraction)
        x0, y0 = (w - cw) // (4 if corner else 2), (h - ch) // (4 if corner else 2)
        return image.crop((x0, y0, x0 + cw, y0 + ch))
    return edit


def border(fraction: float, colour: str) -> Callable[[Image.Image], Image.Image]:
    def edit(image: Image.Image) -> Image.Image:
        return ImageOps.expand(image, int(min(image.size) * fraction), fill=colour)
    return edit


def letterbox(image: Image.Image) -> Image.Image:
    """Into a 16:9 frame (or 9:16), black bars at the sides, as a video frame would hold a photo."""
    w, h = image.size
    frame = (max(w, h * 16 // 9), h) if w <= h * 16 // 9 else (w, w * 9 // 16)
    out = Image.new("RGB", frame, "black")
    out.paste(image, ((frame[0] - w) // 2, (frame[1] - h) // 2))
    return out


def white_bars(cover: float, text: bool = False) -> Callable[[Image.Image], Image.Image]:
    """Three white horizontal bars covering `cover` of the height (top, middle, bottom), as captions do."""
    def edit(image: Image.Image) -> Image.Image:
        out = image.copy()
        draw = ImageDraw.Draw(out)
        w, h = out.size
        bar = int(h * cover / 3)
        for top in (int(h * 0.04), (h - bar) // 2, h - bar - int(h * 0.04)):
            draw.rectangle((0, top, w, top + bar), fill="white")
            if text:
                draw.text((w // 20, top + bar // 4), "WHEN THE BENCH FINALLY RUNS", fill="black",
                          font_size=max(8, bar // 2))
        return out
    return edit


def recompress(image: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(encoded(image, 40)))


EDITS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "jpeg q40": ("mild", recompress),
    "half size": ("mild", lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "brighter": ("mild", lambda im: ImageEnhance.Brightness(im).enhance(1.3)),
    "crop 70%": ("heavy", crop_to(0.7)),
    "crop 50% off-centre": ("heavy", crop_to(0.5, corner=True)),
    "mirror": ("heavy", ImageOps.mirror),
    "rotate 90": ("heavy", lambda im: im.rotate(90, expand=True)),
    "rotate 15": ("heavy", lambda im: im.rotate(15, resample=Image.Resampling.BICUBIC, expand=True)),
    "black border 15%": ("heavy", border(0.15, "black")),
    "white border 15%": ("heavy", border(0.15, "white")),
    "letterbox 16:9": ("heavy", letterbox),
    "white bars 30%": ("overlay", white_bars(0.30)),
    "white bars 45%": ("overlay", white_bars(0.45)),
    "white bars 45% + text": ("overlay", white_bars(0.45, text=True)),
}


# --- measuring ---------------------------------------------------------------------------------


class Model:
    """The product's embedder, fed with the product's preprocessing at a given crop."""

    def __init__(self, handle: str, size: int) -> None:
        from indexer.model import Embedder

        self.embedder = Embedder(handle, size)
        self.size = size

    def run(self, images: list[bytes], crop: float) -> tuple[np.ndarray, np.ndarray]:
        """(unit features, class probabilities) of encoded images, in batches of 16."""
        features, probabilities = [], []
        for start in range(0, len(images), 16):
            pixels = np.stack([decode_image(d, self.size, MAX_PIXELS, crop_fraction=crop).pixels
                               for d in images[start:start + 16]])
            out = self.embedder.embed(pixels)
            features.append(out.features)
            probabilities.append(out.probabilities)
        return np.concatenate(features), np.concatenate(probabilities)


def accuracy(probabilities: np.ndarray, truths: list[set[int]]) -> tuple[float, float, float]:
    """top-1, top-5, and the mean probability given to the right classes (finer-grained on few photos)."""
    ranked = np.argsort(-probabilities, axis=1)[:, :5]
    top1 = np.mean([int(r[0]) in t for r, t in zip(ranked, truths, strict=True)])
    top5 = np.mean([bool(set(map(int, r)) & t) for r, t in zip(ranked, truths, strict=True)])
    right = np.mean([probabilities[i, sorted(t)].sum() for i, t in enumerate(truths)])
    return float(top1), float(top5), float(right)


def stripped_scores(model: Model, queries: list[tuple[str, str, str, bytes]], index: np.ndarray, crop: float,
                    plain: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of the queries with bars cut out ("stripped": instead of the plain query when bars are
    found; "merged": the better of the two per indexed photo)."""
    from bench.overlay_bands import without_bands

    rows, pixels = [], []
    for i, (_, _, _, data) in enumerate(queries):
        upright = open_upright(data, decode_side(model.size, crop), MAX_PIXELS).image
        cut = without_bands(upright)
        if cut is not None:
            rows.append(i)
            pixels.append(model_input(cut, model.size, crop))
    stripped, merged = plain.copy(), plain.copy()
    if rows:
        scores = model.embedder.embed(np.stack(pixels)).features @ index.T
        stripped[rows] = scores
        merged[rows] = np.maximum(plain[rows], scores)
    print(f"crop {crop:.4g}: bars found in {len(rows)} of {len(queries)} queries: "
          + ", ".join(f"{e} {sum(queries[i][1] == e for i in rows)}" for e in EDITS))
    return {"stripped": stripped, "merged": merged}


def folder_photos(root: Path, limit: int) -> tuple[list[bytes], list[set[int]]]:
    """Photos under class folders named by WordNet id or class number."""
    wnids = {}
    for line in (REPO / "indexer" / "data" / "imagenet1k_labels.tsv").read_text().splitlines()[1:]:
        class_id, wnid = line.split("\t")[:2]
        wnids[wnid] = int(class_id)
    data, truths = [], []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    per_folder = max(1, limit // max(1, len(folders)))
    for folder in folders:
        class_id = wnids.get(folder.name, int(folder.name) if folder.name.isdigit() else None)
        if class_id is None:
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_file())[:per_folder]:
            data.append(path.read_bytes())
            truths.append({class_id})
    return data[:limit], truths[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="an ImageNet-trained module (random weights would make the labels meaningless)")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: what the module declares)")
    parser.add_argument("--crops", default="1.0,auto", help="crop fractions to compare, comma-separated")
    parser.add_argument("--photos", type=Path, default=None, help="labelled photos in class folders (see above)")
    parser.add_argument("--limit", type=int, default=2000, help="most labelled photos read from --photos")
    parser.add_argument("--strip-bands", action="store_true",
                        help="also query with white/black bars cut out (bench/overlay_bands.py): alone, and "
                             "merged with the plain query (best score of the two per photo)")
    parser.add_argument("--duplicates-from-photos", type=int, default=0, metavar="N",
                        help="also index N of the --photos (as distractors and as edited queries)")
    args = parser.parse_args()
    if args.model is None:
        parser.error("--model is required: an ImageNet-trained TF1 Hub module or SavedModel (random weights "
                     "make the label figures meaningless)")
    from bench.b4_stand_in import bench_model

    handle, size = bench_model(args.model, args.image_size)
    crops = [eval_crop_fraction(size) if c.strip() == "auto" else float(c) for c in args.crops.split(",")]
    started = time.perf_counter()
    model = Model(handle, size)
    photos = sample_photos()
    names = sorted(photos)
    originals = [encoded(photos[n]) for n in names]
    if args.photos is not None:
        labelled, truths = folder_photos(args.photos, args.limit)
        source = f"{len(labelled)} photos under {args.photos}"
        for i, data in enumerate(labelled[:args.duplicates_from_photos]):
            name = f"photo{i}"
            photos[name] = Image.open(io.BytesIO(data)).convert("RGB")
            names.append(name)
            originals.append(data)
    else:
        chosen = [n for n in names if n in LABELLED]
        labelled, truths = [originals[names.index(n)] for n in chosen], [LABELLED[n] for n in chosen]
        source = f"{len(labelled)} hand-labelled sample photos ({', '.join(chosen)})"
    queries = [(name, edit, group, encoded(fn(photos[name]), 85))
               for edit, (group, fn) in EDITS.items() for name in names]
    print(f"model {handle} at {size}x{size}; labels on {source}; near-duplicates: {len(originals)} indexed photos, "
          f"{len(queries)} edited queries ({len(EDITS)} edits)")
    rows = []
    for crop in crops:
        _, probabilities = model.run(labelled, crop)
        top1, top5, right = accuracy(probabilities, truths)
        index, _ = model.run(originals, crop)
        found, _ = model.run([q[3] for q in queries], crop)
        variants = {"plain": found @ index.T}
        if args.strip_bands:
            variants.update(stripped_scores(model, queries, index, crop, variants["plain"]))
        for variant, scores in variants.items():
            nearest = np.argmax(scores, axis=1)
            hits = [names[j] == q[0] for j, q in zip(nearest, queries, strict=True)]
            by_group = {g: np.mean([h for h, q in zip(hits, queries, strict=True) if q[2] == g])
                        for g in ("mild", "heavy", "overlay")}
            by_edit = {e: np.mean([h for h, q in zip(hits, queries, strict=True) if q[1] == e]) for e in EDITS}
            label = f"{crop:.4g}" if variant == "plain" else f"{crop:.4g}, {variant} query"
            rows.append((label, top1, top5, right, by_group, by_edit, float(np.mean(hits))))
    print("\n| crop_fraction | top-1 | top-5 | p(right class) | recall@1 mild | heavy | overlay | all |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for crop, top1, top5, right, g, _, total in rows:
        print(f"| {crop} | {top1:.3f} | {top5:.3f} | {right:.3f} | {g['mild']:.3f} | {g['heavy']:.3f} "
              f"| {g['overlay']:.3f} | {total:.3f} |")
    print("\nrecall@1 per edit: " + "; ".join(
        f"{e} " + " / ".join(f"{r[5][e]:.2f}" for r in rows) for e in EDITS) + "  (rows in table order)")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
