"""Custom labels: how well a label learned from N examples finds the rest, and how fast it is kept up to date.

    python bench/label_tree.py build/label-tree          # the labelled tree (once, ~1 minute)
    python bench/custom_labels.py --tree build/label-tree --model package:efficientnet-lite0 \\
        --image-size 224 [--draws 5] [--ns 1,3,5,10] [--rescore 100000] [--database-url URL]

Quality: every sub-folder of the tree is a label (folders starting with "_" are unlabelled
background). For each label, N = 1, 3, 5, 10 examples are drawn at random (--draws times); each
learner ranks every other image of the tree, and the label's other images are the relevant ones:
average precision and precision@20, per kind of label (object, digit, face) and overall.
The product's learner is also judged at its own default threshold (precision, recall) and on its
cross-validated quality estimate (against the measured AP). Features come from the real model
(cached next to the tree).

Speed (synthetic 1792-d unit vectors): the time to learn one label (fit + cross-validation, with
the product's 1,000 background images), and on a catalog of --rescore images the time from a
changed label to its new scores being visible to class filters, as the API's background job does it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.label_learning import (  # noqa: E402
    DEFAULT_C,
    _training_set,
    average_precision,
    default_threshold,
    fit_label,
    label_scores,
    learn_label,
    ranking_auc,
)

BACKGROUND = 1000  # background images per label, as the product samples them
Learner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (positives, background) -> scores of the pool


# --- the labelled tree and its features ------------------------------------------------------


def tree_files(tree: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every image, its label index (-1: background) and the label names."""
    folders = sorted(p for p in tree.iterdir() if p.is_dir())
    names = [f.name for f in folders if not f.name.startswith("_")]
    files, labels = [], []
    for folder in folders:
        index = names.index(folder.name) if folder.name in names else -1
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                files.append(path)
                labels.append(index)
    return files, np.asarray(labels), names


def features(tree: Path, files: list[Path], handle: str, image_size: int) -> np.ndarray:
    """Unit feature vectors of `files` through the product's decoder and embedder (cached)."""
    key = hashlib.sha256("\n".join([handle, str(image_size), *map(str, files)]).encode()).hexdigest()[:16]
    cache = tree / f".features-{key}.npy"
    if cache.exists():
        return np.load(cache)
    from indexer.images import decode_image
    from indexer.model import Embedder

    embedder = Embedder(handle, image_size)
    out = []
    for start in range(0, len(files), 32):
        pixels = np.stack([decode_image(f.read_bytes(), image_size, 10**8).pixels for f in files[start:start + 32]])
        out.append(embedder.embed(pixels).features)
    vectors = np.concatenate(out).astype(np.float32)
    np.save(cache, vectors)
    return vectors


# --- learners --------------------------------------------------------------------------------


def prototype(positives: np.ndarray, background: np.ndarray, pool: np.ndarray) -> np.ndarray:
    centre = positives.mean(axis=0)
    return pool @ (centre / np.linalg.norm(centre))


def logistic(c: float) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    def score(positives: np.ndarray, background: np.ndarray, pool: np.ndarray) -> np.ndarray:
        w, b = fit_label(positives, np.zeros((0, positives.shape[1]), np.float32), background, c)
        return label_scores(w, b, pool)
    return score


def sklearn_logistic(positives: np.ndarray, background: np.ndarray, pool: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    x, y, weights = _training_set(positives, np.zeros((0, positives.shape[1]), np.float32), background)
    model = LogisticRegression(C=DEFAULT_C, max_iter=1000).fit(x, y, sample_weight=weights)
    return model.decision_function(pool)


def sklearn_svm(positives: np.ndarray, background: np.ndarray, pool: np.ndarray) -> np.ndarray:
    from sklearn.svm import LinearSVC

    x, y, weights = _training_set(positives, np.zeros((0, positives.shape[1]), np.float32), background)
    return LinearSVC(C=DEFAULT_C).fit(x, y, sample_weight=weights).decision_function(pool)


# name -> (what the table calls it, scorer of the pool from positives and background)
LEARNERS: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]] = {
    "prototype": ("prototype (mean vector)", prototype),
    "logistic": (f"logistic C={DEFAULT_C:g} (product)", logistic(DEFAULT_C)),
    "logistic-c1": ("logistic C=1", logistic(1.0)),
    "logistic-c10": ("logistic C=10", logistic(10.0)),
    "logistic-c30": ("logistic C=30", logistic(30.0)),
    "logistic-c100": ("logistic C=100", logistic(100.0)),
    "logistic-c300": ("logistic C=300", logistic(300.0)),
    "logistic-c1000": ("logistic C=1000", logistic(1000.0)),
    "sklearn-logistic": (f"sklearn LogisticRegression C={DEFAULT_C:g}", sklearn_logistic),
    "sklearn-svm": (f"sklearn LinearSVC C={DEFAULT_C:g}", sklearn_svm),
}


def _cv_f1(held_pos: np.ndarray, held_bg: np.ndarray) -> float:
    """The threshold with the best F1 of held-out positives against the held-out background."""
    candidates = np.unique(held_pos)
    f1 = [2 * (held_pos >= t).sum() / (len(held_pos) + (held_pos >= t).sum() + (held_bg >= t).sum())
          for t in candidates]
    return float(candidates[int(np.argmax(f1))])


# name -> threshold from the cross-validated scores of the positives and of the background
THRESHOLD_RULES: dict[str, Callable[[np.ndarray | None, np.ndarray | None], float]] = {
    "product: positives' median within [0.3, 0.5]": default_threshold,
    **{f"fixed {t:g}": (lambda p, b, t=t: t) for t in (0.3, 0.4, 0.5, 0.6)},
    "positives' 20th percentile within [0.3, 0.5]": lambda p, b: float(np.clip(np.quantile(p, 0.2), 0.3, 0.5))
    if p is not None else 0.3,
    "positives' median": lambda p, b: float(np.median(p)) if p is not None else 0.3,
    "best F1 against the background": lambda p, b: _cv_f1(p, b) if p is not None and b is not None else 0.3,
}


def kind_of(name: str) -> str:
    return name.split("-")[0]


def precision_at(relevant: np.ndarray, scores: np.ndarray, k: int) -> float:
    return float(relevant[np.argsort(-scores, kind="stable")[:k]].mean())


def quality(vectors: np.ndarray, labels: np.ndarray, names: list[str], ns: list[int], draws: int,
            learners: list[str]) -> None:
    rng = np.random.default_rng(0)
    results: dict[tuple[int, str, str], list[tuple[float, float, float]]] = defaultdict(list)
    rules: dict[tuple[int, str, str], list[tuple[float, float, float]]] = defaultdict(list)
    product: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    for n in ns:
        for index, name in enumerate(names):
            members = np.flatnonzero(labels == index)
            for _ in range(draws):
                chosen = rng.choice(members, size=n, replace=False)
                rest = np.setdiff1d(np.arange(len(vectors)), chosen)
                relevant = labels[rest] == index
                background = vectors[rng.choice(rest, size=min(BACKGROUND, len(rest)), replace=False)]
                for learner in learners:
                    started = time.perf_counter()
                    scores = LEARNERS[learner][1](vectors[chosen], background, vectors[rest])
                    seconds = time.perf_counter() - started
                    results[(n, learner, kind_of(name))].append(
                        (average_precision(relevant, scores), precision_at(relevant, scores, 20), seconds))
                learned = learn_label(vectors[chosen], np.zeros((0, vectors.shape[1]), np.float32), background)
                scores = learned.scores(vectors[rest])
                held = (learned.held_out_positives, learned.held_out_background)
                for rule, threshold_of in THRESHOLD_RULES.items():
                    above = scores >= threshold_of(*held)
                    precision = float(relevant[above].mean()) if above.any() else 0.0
                    recall = float(above[relevant].mean())
                    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
                    rules[(n, rule, kind_of(name))].append((precision, recall, f1))
                estimate = learned.quality.auc if learned.quality else float("nan")
                product[(n, kind_of(name))].append((estimate, ranking_auc(scores[relevant], scores[~relevant])))
    kinds = sorted({kind_of(n) for n in names})
    print(f"\nquality: {len(names)} labels ({', '.join(f'{k} {sum(kind_of(n) == k for n in names)}' for k in kinds)}), "
          f"{len(vectors)} images, {draws} draws per label and N; AP / P@20, mean over labels and draws")
    print(f"| N | learner | {' | '.join(kinds)} | all | ms per label |")
    print(f"| --- | --- | {' | '.join('---' for _ in kinds)} | --- | --- |")
    for n in ns:
        for learner in learners:
            cells, every = [], []
            for kind in kinds:
                rows = results[(n, learner, kind)]
                every += rows
                cells.append(f"{np.mean([r[0] for r in rows]):.3f} / {np.mean([r[1] for r in rows]):.3f}")
            ms = 1000 * np.mean([r[2] for r in every])
            print(f"| {n} | {LEARNERS[learner][0]} | {' | '.join(cells)} | {np.mean([r[0] for r in every]):.3f} / "
                  f"{np.mean([r[1] for r in every]):.3f} | {ms:.0f} |")
    print("\nthreshold rules on the product's label: precision / recall / F1 of the label's images at the threshold")
    print(f"| N | rule | {' | '.join(kinds)} | all |")
    print(f"| --- | --- | {' | '.join('---' for _ in kinds)} | --- |")
    for n in ns:
        for rule in THRESHOLD_RULES:
            cells, every = [], []
            for kind in kinds:
                rows = rules[(n, rule, kind)]
                every += rows
                cells.append(" / ".join(f"{np.mean([r[i] for r in rows]):.2f}" for i in range(3)))
            print(f"| {n} | {rule} | {' | '.join(cells)} | "
                  f"{' / '.join(f'{np.mean([r[i] for r in every]):.2f}' for i in range(3))} |")
    print("\nthe product's cross-validated quality estimate (AUC: a held-out example vs a library image) "
          "against the measured AUC (the label's other images vs the rest)")
    print("| N | kind | estimated AUC | measured AUC |")
    print("| --- | --- | --- | --- |")
    for n in ns:
        for kind in [*kinds, "all"]:
            rows = [r for (m, k), v in product.items() if m == n and kind in (k, "all") for r in v]
            est = [r[0] for r in rows if not np.isnan(r[0])]
            print(f"| {n} | {kind} | {np.mean(est) if est else float('nan'):.3f} | "
                  f"{np.mean([r[1] for r in rows]):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, help="labelled folder tree (bench/label_tree.py makes one)")
    parser.add_argument("--model", default="package:efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--ns", default="1,3,5,10")
    parser.add_argument("--learners", default=",".join(LEARNERS), help="comma-separated names (see LEARNERS)")
    parser.add_argument("--rescore", type=int, default=100_000, help="catalog size for the rescoring time (0: skip)")
    parser.add_argument("--dim", type=int, default=1792)
    parser.add_argument("--database-url", default=None, help="catalog for the rescoring time (default: SQLite in "
                        "--work-dir); it must be empty or hold the bench's images")
    parser.add_argument("--work-dir", type=Path, default=Path("build/label-bench"),
                        help="where the synthetic catalog and its index are kept between runs")
    args = parser.parse_args()
    if args.tree:
        files, labels, names = tree_files(args.tree)
        vectors = features(args.tree, files, args.model, args.image_size)
        quality(vectors, labels, names, [int(n) for n in args.ns.split(",")], args.draws,
                [name for name in args.learners.split(",") if name in LEARNERS])
    if args.rescore:
        from bench.label_timing import timings

        timings(args.rescore, args.dim, args.database_url, args.work_dir)


if __name__ == "__main__":
    main()
