"""Learning a custom label from a few example images, on their stored feature vectors (no model run).

A label is a weighted, L2-regularised logistic regression: the positive examples against the
negative examples and a random sample of the library as unlabelled background. The background
makes a few positives enough: what sets the label's images apart from the typical photo of this
library is learned, not just what they have in common (bench/custom_labels.py measures it
against the mean-vector prototype). Fitting takes a few Newton steps whose linear systems are
solved by conjugate gradients, so only matrix-vector products with the examples are needed
(tens of milliseconds for 2,000 x 1792 vectors).

The default threshold and the quality estimate come from cross-validation: each fold leaves
out some positives and a slice of the background, and the held-out scores say how a positive the
label has not seen scores, and how it ranks among ordinary images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from threadpoolctl import ThreadpoolController

# Regularisation: 1/C with sklearn's convention (the data term is a weighted sum over examples).
DEFAULT_C = 300.0
# A rejected (negative) example counts as much as a positive one; the background as a whole
# counts as much as all positives together.
NEGATIVE_WEIGHT = 1.0
# Threshold rule (bench/custom_labels.py compares it with fixed thresholds and other rules): the median
# cross-validated score of the positives, kept within [MIN_THRESHOLD, MAX_THRESHOLD]; with one positive
# (nothing to cross-validate) FALLBACK_THRESHOLD.
MIN_THRESHOLD = 0.3
MAX_THRESHOLD = 0.5
FALLBACK_THRESHOLD = 0.3
MIN_POSITIVES_FOR_QUALITY = 3
MAX_FOLDS = 5
NEWTON_STEPS = 12
CG_STEPS = 30


class LearningError(ValueError):
    """The examples cannot make a label (no positive, mixed dimensions, ...)."""


@dataclass(frozen=True)
class Quality:
    """Cross-validated estimate: held-out positives among held-out background images."""

    folds: int
    auc: float  # chance that a held-out positive outranks a held-out background image
    recall: float  # held-out positives scoring at or above the threshold

    def to_json(self) -> dict[str, object]:
        return {"folds": self.folds, "auc": round(self.auc, 4), "recall": round(self.recall, 4)}


@dataclass(frozen=True)
class LearnedLabel:
    weights: np.ndarray  # float32 [D]
    bias: float
    threshold: float  # the suggested default threshold on scores
    quality: Quality | None
    # Cross-validated scores of the positives and of the background (None with one positive).
    held_out_positives: np.ndarray | None = None
    held_out_background: np.ndarray | None = None

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Probability-like scores in [0, 1] of unit vectors [n, D]."""
        return label_scores(self.weights, self.bias, vectors)


def label_scores(weights: np.ndarray, bias: float, vectors: np.ndarray) -> np.ndarray:
    """sigmoid(vectors @ weights + bias) as float32, computed without overflow."""
    z = np.asarray(vectors, dtype=np.float32) @ np.asarray(weights, dtype=np.float32) + np.float32(bias)
    return _sigmoid(z).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z, dtype=np.float64)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    ez = np.exp(z[~positive])
    out[~positive] = ez / (1.0 + ez)
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, c: float = DEFAULT_C,
                 steps: int = NEWTON_STEPS, start: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, float]:
    """Weights and bias minimising sum_i s_i * logloss_i + |w|^2 / (2c) (the bias is not regularised).

    Newton's method with a conjugate-gradient solve of each step (inexact: the solve stops once
    it has gained a factor that tightens as the gradient shrinks) and a backtracking line search.
    The vectors stay float32 (the products dominate the cost); sums are kept in float64.
    """
    x = np.asarray(x, dtype=np.float32)
    t = np.asarray(y, dtype=np.float64)
    s = np.asarray(sample_weight, dtype=np.float64)
    lam = 1.0 / c
    if start is not None:
        w, b = np.asarray(start[0], dtype=np.float64), float(start[1])
    else:
        w = np.zeros(x.shape[1])
        b = float(np.log(max(s[t > 0].sum(), 1e-12) / max(s[t <= 0].sum(), 1e-12)))

    def loss(w_: np.ndarray, b_: float) -> float:
        z = x @ w_.astype(np.float32) + b_
        # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, stably.
        signed = np.where(t > 0, -z, z)
        return float(s @ np.logaddexp(0.0, signed) + 0.5 * lam * (w_ @ w_))

    current = loss(w, b)
    for _ in range(steps):
        p = _sigmoid((x @ w.astype(np.float32)).astype(np.float64) + b)
        r = s * (p - t)
        grad_w = (x.T @ r.astype(np.float32)).astype(np.float64) + lam * w
        grad_b = float(r.sum())
        grad_norm = float(np.sqrt(grad_w @ grad_w + grad_b * grad_b))
        if grad_norm < 1e-6 * max(1.0, s.sum()):
            break
        h = s * p * (1.0 - p)
        forcing = min(0.5, float(np.sqrt(grad_norm / max(1.0, s.sum()))))
        step_w, step_b = _newton_direction(x, h, lam, grad_w, grad_b, forcing)
        slope = float(grad_w @ step_w + grad_b * step_b)
        size = 1.0
        while size > 1e-4:
            trial = loss(w + size * step_w, b + size * step_b)
            if trial <= current + 1e-4 * size * slope:
                break
            size *= 0.5
        else:
            break
        w, b, previous, current = w + size * step_w, b + size * step_b, current, trial
        if previous - current < 1e-7 * max(1.0, abs(previous)):
            break
    return w.astype(np.float32), b


def _newton_direction(x: np.ndarray, h: np.ndarray, lam: float, grad_w: np.ndarray,
                      grad_b: float, forcing: float) -> tuple[np.ndarray, float]:
    """Approximately solve H [dw, db] = -g by conjugate gradients, H = [X 1]^T diag(h) [X 1] + lam (w only),
    until the residual is `forcing` times the gradient."""

    def hess(vw: np.ndarray, vb: float) -> tuple[np.ndarray, float]:
        u = h * ((x @ vw.astype(np.float32)).astype(np.float64) + vb)
        return (x.T @ u.astype(np.float32)).astype(np.float64) + lam * vw, float(u.sum())

    dw, db = np.zeros_like(grad_w), 0.0
    rw, rb = -grad_w, -grad_b
    pw, pb = rw.copy(), rb
    rr = float(rw @ rw + rb * rb)
    tolerance = forcing * forcing * rr
    for _ in range(CG_STEPS):
        hw, hb = hess(pw, pb)
        curvature = float(pw @ hw + pb * hb)
        if curvature <= 0:
            break
        alpha = rr / curvature
        dw, db = dw + alpha * pw, db + alpha * pb
        rw, rb = rw - alpha * hw, rb - alpha * hb
        new_rr = float(rw @ rw + rb * rb)
        if new_rr < tolerance:
            break
        pw, pb = rw + (new_rr / rr) * pw, rb + (new_rr / rr) * pb
        rr = new_rr
    if not np.any(dw) and db == 0.0:
        return -grad_w, -grad_b
    return dw, db


def _training_set(positives: np.ndarray, negatives: np.ndarray,
                  background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked vectors, targets and weights: positives and the background weigh the same in total;
    each rejected example weighs as much as one positive."""
    n_pos, n_neg, n_bg = len(positives), len(negatives), len(background)
    x = np.concatenate([positives, negatives, background]).astype(np.float32, copy=False)
    y = np.concatenate([np.ones(n_pos), np.zeros(n_neg + n_bg)])
    pos_weight = 1.0
    bg_weight = n_pos / n_bg if n_bg else 0.0
    weights = np.concatenate([np.full(n_pos, pos_weight), np.full(n_neg, NEGATIVE_WEIGHT * pos_weight),
                              np.full(n_bg, bg_weight)])
    return x, y, weights


def fit_label(positives: np.ndarray, negatives: np.ndarray, background: np.ndarray,
              c: float = DEFAULT_C) -> tuple[np.ndarray, float]:
    """Weights and bias of a label from its examples and background vectors (no threshold, no estimate)."""
    x, y, weights = _training_set(positives, negatives, background)
    return fit_logistic(x, y, weights, c)


def average_precision(relevant: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of a ranking by `scores` (descending) for the boolean `relevant`."""
    total = int(np.count_nonzero(relevant))
    if total == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order].astype(np.float64)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / total)


def ranking_auc(positives: np.ndarray, others: np.ndarray) -> float:
    """Chance that a positive outranks one of `others` (ties count half)."""
    if len(positives) == 0 or len(others) == 0:
        return 0.0
    ranked = np.sort(others)
    below = np.searchsorted(ranked, positives, side="left")
    ties = np.searchsorted(ranked, positives, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(positives) * len(others)))


def default_threshold(held_pos: np.ndarray | None, held_bg: np.ndarray | None) -> float:
    """The threshold rule (chosen with bench/custom_labels.py): the median cross-validated score of the
    positives, kept within [MIN_THRESHOLD, MAX_THRESHOLD]; FALLBACK_THRESHOLD without them.

    More examples make the label surer of its images, and the threshold rises with it: a fixed one
    is too strict for one example or too loose for ten."""
    if held_pos is None or len(held_pos) == 0:
        return FALLBACK_THRESHOLD
    return float(np.clip(np.median(held_pos), MIN_THRESHOLD, MAX_THRESHOLD))


@lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


def learn_label(positives: np.ndarray, negatives: np.ndarray, background: np.ndarray,
                c: float = DEFAULT_C, seed: int = 0) -> LearnedLabel:
    """Fit a label on every example; threshold and quality from cross-validation (see _learn_label).

    The many small matrix-vector products run on one BLAS thread: on two busy cores, BLAS's own
    threads made learning ten times slower (2 s instead of 0.1 s for 1,000 background images).
    """
    with _threadpools().limit(limits=1, user_api="blas"):
        return _learn_label(positives, negatives, background, c, seed)


def _learn_label(positives: np.ndarray, negatives: np.ndarray, background: np.ndarray, c: float,
                 seed: int) -> LearnedLabel:
    """Fit a label on every example; threshold and quality from cross-validation over the positives.

    `positives` [P, D] (P >= 1), `negatives` [Q, D], `background` [B, D]: unit vectors; the
    background must not hold the examples themselves.

    The quality estimate is a ranking AUC: the chance that a positive the label did not see scores
    above a random library image. Unlike average precision it stays honest when the background
    holds unlabelled images of the label (the library usually does): they only pull it towards 0.5
    in proportion to how common the label is.
    """
    positives = _matrix(positives, "positive examples")
    dimension = positives.shape[1]
    negatives = _matrix(negatives, "negative examples", dimension)
    background = _matrix(background, "background images", dimension)
    if len(positives) == 0:
        raise LearningError("a label needs at least one positive example")
    weights, bias = fit_label(positives, negatives, background, c)
    held_pos, held_bg = _cross_validate(positives, negatives, background, c, seed, (weights, bias))
    threshold = default_threshold(held_pos, held_bg)
    quality = None
    if held_pos is not None and held_bg is not None and len(positives) >= MIN_POSITIVES_FOR_QUALITY:
        quality = Quality(_folds(len(positives)), ranking_auc(held_pos, held_bg),
                          float(np.mean(held_pos >= threshold)))
    return LearnedLabel(weights, bias, threshold, quality, held_pos, held_bg)


def _folds(n_positives: int) -> int:
    return min(MAX_FOLDS, n_positives)


def _cross_validate(positives: np.ndarray, negatives: np.ndarray, background: np.ndarray, c: float, seed: int,
                    start: tuple[np.ndarray, float]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Held-out scores of every positive and of the background, each from a model that did not see it
    (each fold starts from the full model's weights: a few Newton steps away)."""
    folds = _folds(len(positives))
    if folds < 2:
        return None, None
    rng = np.random.default_rng(seed)
    pos_fold = rng.permutation(len(positives)) % folds
    bg_fold = rng.permutation(len(background)) % folds
    held_pos = np.empty(len(positives), np.float32)
    held_bg = np.empty(len(background), np.float32)
    for fold in range(folds):
        x, y, weights = _training_set(positives[pos_fold != fold], negatives, background[bg_fold != fold])
        w, b = fit_logistic(x, y, weights, c, start=start)
        held_pos[pos_fold == fold] = label_scores(w, b, positives[pos_fold == fold])
        held_bg[bg_fold == fold] = label_scores(w, b, background[bg_fold == fold])
    return held_pos, held_bg


def _matrix(vectors: np.ndarray, what: str, dimension: int | None = None) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, dimension or (array.shape[1] if array.ndim == 2 else 0)), np.float32)
    if array.ndim != 2 or (dimension is not None and array.shape[1] != dimension):
        raise LearningError(f"{what}: expected vectors of dimension {dimension}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise LearningError(f"{what}: vectors hold NaN or infinite values")
    return array
