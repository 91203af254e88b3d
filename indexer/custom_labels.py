"""Custom labels: taught from a few example images, learned on their stored vectors, kept scored.

The LabelBook is the one place that changes labels, for the API, the CLI and the indexer:
creating and changing a label learns it (tens of milliseconds, no model run); scoring the
library is a separate step (`rescore`) that the API runs in the background and the CLI runs at
once; images the indexer commits are scored by `score_new_images`, and `catch_up` (after an
indexing run) drops examples whose images left the library, relearns those labels and finishes
any scoring left pending by a process that died.

A label learned with one model is kept, with its examples (stored by content hash), when the
model changes; it cannot be used until it is relearned from the new model's vectors.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.label_learning import LearningError, learn_label
from indexer.label_names import (
    LABEL_PREFIX,
    MAX_EXAMPLES,
    UNCHANGED,
    LabelError,
    Unchanged,
    check_name,
    id_list,
    parse_threshold,
)
from indexer.label_scoring import joined, score_library, vector_scores, with_examples
from storage import labels as store
from storage.catalog import Catalog
from storage.label_queries import member_counts, scored_members
from storage.label_scan import iter_vectors
from storage.labels import DuplicateLabelError, Learned, StoredLabel, borderline_band, floor_for

log = logging.getLogger(__name__)

BACKGROUND_IMAGES = 1000  # random library images the label is learned against
SAVE_ATTEMPTS = 3


@dataclass(frozen=True)
class Member:
    """An image with a stored score for a label: member (at or above the threshold) or a near miss."""

    image_id: int
    score: float
    member: bool
    borderline: bool
    example: str | None  # "positive", "negative" or None


class LabelBook:
    """Labels of one catalog, for the model `model_id` (the one the catalog's vectors come from)."""

    def __init__(self, catalog: Catalog, model_id: str, background: int = BACKGROUND_IMAGES,
                 index_dir: Path | None = None) -> None:
        """`index_dir`: where the published index generations are, to score from them instead of the catalog."""
        self.catalog = catalog
        self.model_id = model_id
        self.background = background
        self.index_dir = index_dir

    # --- reading -------------------------------------------------------------------------

    def get(self, name: str) -> StoredLabel:
        label = store.get_label(self.catalog, name)
        if label is None:
            raise LabelError(f"no custom label is named {name!r}", "name", 404, "unknown_label")
        return label

    def all(self) -> list[StoredLabel]:
        return store.all_labels(self.catalog)

    def is_stale(self, label: StoredLabel) -> bool:
        return label.model_id != self.model_id

    def state(self, label: StoredLabel) -> str:
        if self.is_stale(label):
            return "stale"
        if label.weights is None:
            return "empty"
        return "scoring" if label.scoring else "ready"

    def stale_message(self, label: StoredLabel) -> str:
        return (f"custom label {label.name!r} was learned with model {label.model_id}, but the library is now "
                f"indexed with {self.model_id}: relearn it from its examples (PATCH /api/v1/labels/<name> with "
                f'{{"relearn": true}}, or `lookalike label relearn NAME`); its examples are kept')

    def resolve(self, names: Sequence[str], field: str = "class") -> tuple[int, ...]:
        """Label ids for class filters `label:<name>`; unknown or stale labels are refused."""
        if not names:
            return ()
        known = {name.casefold(): (label_id, name, model) for label_id, name, model in store.label_names(self.catalog)}
        ids = []
        for name in names:
            if not name.strip():
                raise LabelError("class filter 'label:' needs a label name, e.g. label:receipts", field, 400,
                                 "unknown_class")
            found = known.get(name.strip().casefold())
            if found is None:
                hint = f"; the labels are {', '.join(repr(n) for _, n, _ in known.values())}" if known else ""
                raise LabelError(f"unknown custom label {name!r} in class filter {LABEL_PREFIX}{name}{hint}",
                                 field, 400, "unknown_class")
            if found[2] != self.model_id:
                label = store.get_label_by_id(self.catalog, found[0])
                raise LabelError(self.stale_message(label) if label else "label changed", field, 409,
                                 "label_needs_relearning")
            ids.append(found[0])
        return tuple(dict.fromkeys(ids))

    def to_json(self, label: StoredLabel, counts: dict[int, int] | None = None) -> dict[str, object]:
        """The label as the API and `lookalike label show --json` give it."""
        ids = store.ids_for_hashes(self.catalog, (*label.positives, *label.negatives), self.model_id)
        positive_ids = sorted(ids[h] for h in label.positives if h in ids)
        negative_ids = sorted(ids[h] for h in label.negatives if h in ids)
        state = self.state(label)
        count = 0 if state in ("stale", "empty") else (
            counts if counts is not None else member_counts(self.catalog)).get(label.id, 0)
        out: dict[str, object] = {
            "name": label.name,
            "state": state,
            "positive_ids": positive_ids,
            "negative_ids": negative_ids,
            "missing_examples": len(label.positives) + len(label.negatives) - len(positive_ids) - len(negative_ids),
            "threshold": round(label.threshold, 6),
            "threshold_auto": label.threshold_auto,
            "default_threshold": label.learning.get("default_threshold"),
            "count": count,
            "quality": label.learning.get("quality"),
            "model_id": label.model_id,
            "created_at": label.created_at.isoformat(),
            "updated_at": label.updated_at.isoformat(),
        }
        if state == "stale":
            out["message"] = self.stale_message(label)
        return out

    def members(self, label: StoredLabel, offset: int, limit: int) -> tuple[list[Member], int]:
        """Images with a stored score, best first: members, then the near misses of the borderline band."""
        if self.is_stale(label):
            raise LabelError(self.stale_message(label), "name", 409, "label_needs_relearning")
        rows, total = scored_members(self.catalog, label.id, offset, limit)
        low, high = borderline_band(label.threshold)
        hashes = store.hashes_for_ids(self.catalog, [i for i, _ in rows])
        positives, negatives = set(label.positives), set(label.negatives)

        def example(image_id: int) -> str | None:
            h = hashes.get(image_id, ("", ""))[0]
            return "positive" if h in positives else "negative" if h in negatives else None

        return [Member(i, s, s >= label.threshold, low <= s < high, example(i)) for i, s in rows], total

    # --- changing ------------------------------------------------------------------------

    def create(self, name: object, positive_ids: object, negative_ids: object = None,
               threshold: object = None) -> StoredLabel:
        """Learn a new label from its examples (scores come with `rescore`)."""
        text = check_name(name)
        positives = id_list(positive_ids, "positive_ids")
        negatives = id_list(negative_ids, "negative_ids")
        if not positives:
            raise LabelError("positive_ids must name at least one image of the label", "positive_ids")
        both = sorted(set(positives) & set(negatives))
        if both:
            raise LabelError(f"image {both[0]} is in both positive_ids and negative_ids", "negative_ids")
        chosen = parse_threshold(threshold)
        hashes = self._hashes(positives, "positive_ids") + self._hashes(negatives, "negative_ids")
        pos_hashes, neg_hashes = hashes[:len(positives)], hashes[len(positives):]
        if store.get_label(self.catalog, text) is not None:
            raise LabelError(f"a label named {text!r} exists already", "name", 409, "duplicate_label")
        learned = self._learn(text, pos_hashes, neg_hashes, 0)
        try:
            label = store.create_label(self.catalog, text, learned, pos_hashes, neg_hashes,
                                       None if isinstance(chosen, Unchanged) else chosen)
        except DuplicateLabelError as exc:
            raise LabelError(str(exc), "name", 409, "duplicate_label") from None
        log.info("custom label %r learned from %d positive and %d negative examples", text, len(pos_hashes),
                 len(neg_hashes))
        return label

    def change(self, name: str, add_positive_ids: object = None, add_negative_ids: object = None,
               remove_ids: object = None, threshold: object = UNCHANGED, relearn: bool = False) -> StoredLabel:
        """Add examples (an image given with the other polarity is flipped), remove examples, set the
        threshold (None: back to the learned default). The label is relearned when its examples change,
        when asked to, and always when it was learned with another model."""
        add_pos = id_list(add_positive_ids, "add_positive_ids")
        add_neg = id_list(add_negative_ids, "add_negative_ids")
        remove = id_list(remove_ids, "remove_ids")
        clash = sorted((set(add_pos) & set(add_neg)) | (set(remove) & (set(add_pos) | set(add_neg))))
        if clash:
            raise LabelError(f"image {clash[0]} is named twice among add_positive_ids, add_negative_ids and "
                             "remove_ids", "remove_ids" if clash[0] in remove else "add_negative_ids")
        chosen = parse_threshold(threshold)
        pos_add = self._hashes(add_pos, "add_positive_ids")
        neg_add = self._hashes(add_neg, "add_negative_ids")
        for _ in range(SAVE_ATTEMPTS):
            label = self.get(name)
            removed = self._removed_hashes(label, remove)
            positives = [h for h in label.positives if h not in removed and h not in neg_add]
            negatives = [h for h in label.negatives if h not in removed and h not in pos_add]
            positives += [h for h in pos_add if h not in positives]
            negatives += [h for h in neg_add if h not in negatives]
            if len(positives) + len(negatives) > MAX_EXAMPLES:
                raise LabelError(f"a label holds at most {MAX_EXAMPLES} examples", "add_positive_ids")
            changed = (tuple(positives), tuple(negatives)) != (label.positives, label.negatives)
            learned = None
            if changed or relearn or self.is_stale(label):
                learned = self._learn(label.name, positives, negatives, label.version)
            new_threshold = False if isinstance(chosen, Unchanged) else chosen
            if store.save_label(self.catalog, label, learned, positives, negatives, new_threshold):
                return self.get(label.name)
        raise LabelError(f"label {name!r} is being changed by someone else; try again", "name", 409, "conflict")

    def delete(self, name: str) -> None:
        if not store.delete_label(self.catalog, name):
            raise LabelError(f"no custom label is named {name!r}", "name", 404, "unknown_label")

    # --- scoring -----------------------------------------------------------------------

    def rescore(self, label_id: int) -> bool:
        """Score every image for a label whose scores are behind; False when there was nothing to do
        or another process is on it. Images committed meanwhile are scored afterwards, as the tail."""
        label = store.get_label_by_id(self.catalog, label_id)
        if label is None or not label.scoring:
            return False
        max_id = self.catalog.max_image_id()
        if label.weights is None or self.is_stale(label):
            return store.replace_scores(self.catalog, label, 1.0, max_id, np.empty(0, np.int64), np.empty(0))
        if not store.claim_rescoring(self.catalog, label):
            return False
        try:
            floor = floor_for(label.threshold)
            ids, scores = score_library(self.catalog, self.model_id, self.index_dir, label, max_id, floor,
                                        self._example_ids(label))
            done = store.replace_scores(self.catalog, label, floor, max_id, ids, scores)
        finally:
            store.release_claim(self.catalog, label.id)
        if done:
            log.info("custom label %r: %d images scored at or above %.3f", label.name, len(ids), floor)
            self.score_new_images()
        return done

    def pending(self) -> list[int]:
        """Ids of the labels whose scores are behind (a rescoring that has not finished)."""
        return [label.id for label in self.all() if label.scoring]

    def score_new_images(self) -> int:
        """Score the images committed after each label's last scoring; returns how many labels gained scores."""
        labels = [label for label in self.all()
                  if label.weights is not None and not label.scoring and not self.is_stale(label)]
        if not labels:
            return 0
        max_id = self.catalog.max_image_id()
        start = min(label.scored_max_id for label in labels)
        if start >= max_id:
            return 0
        kept: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {label.id: [] for label in labels}
        for ids, vectors in iter_vectors(self.catalog, start, max_id):
            for label in labels:
                newer = ids > label.scored_max_id
                if newer.any():
                    scores = vector_scores(label, vectors[newer])
                    keep = scores >= label.scored_floor
                    kept[label.id].append((ids[newer][keep], scores[keep]))
        written = 0
        for label in labels:
            ids, scores = joined(kept[label.id])
            ids, scores = with_examples(ids, scores, self._example_ids(label), label.scored_max_id, max_id)
            written += store.append_scores(self.catalog, label, max_id, ids, scores)
        return written

    def catch_up(self) -> None:
        """After indexing: forget examples whose images are gone (relearning those labels), finish
        pending scorings, score new images."""
        self.forget_missing_examples()
        for label_id in self.pending():
            self.rescore(label_id)
        self.score_new_images()

    def forget_missing_examples(self) -> list[str]:
        """Drop examples no image holds any more (their files left the library) and relearn those labels;
        a label left without positives becomes empty. Returns the names of the labels changed."""
        changed = []
        for label_id, gone in store.missing_examples(self.catalog, self.model_id).items():
            for _ in range(SAVE_ATTEMPTS):
                label = store.get_label_by_id(self.catalog, label_id)
                if label is None:
                    break
                positives = [h for h in label.positives if h not in gone]
                negatives = [h for h in label.negatives if h not in gone]
                learned = self._learn(label.name, positives, negatives, label.version)
                if store.save_label(self.catalog, label, learned, positives, negatives, False):
                    log.info("custom label %r: %d example image(s) left the library; %s", label.name,
                             len(gone), f"relearned from {len(positives)} positive example(s)" if positives
                             else "no positive example is left, so the label is empty")
                    changed.append(label.name)
                    break
        return changed

    # --- helpers ---------------------------------------------------------------------------

    def _hashes(self, ids: list[int], field: str) -> list[str]:
        found = store.hashes_for_ids(self.catalog, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise LabelError(f"{field}: no indexed image has id {missing[0]}"
                             + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""), field)
        other = [i for i in ids if found[i][1] != self.model_id]
        if other:
            raise LabelError(f"{field}: image {other[0]} was indexed with model {found[other[0]][1]}, not "
                             f"{self.model_id}: index the library again first", field, 409, "model_mismatch")
        return [found[i][0] for i in ids]

    def _removed_hashes(self, label: StoredLabel, ids: list[int]) -> set[str]:
        found = store.hashes_for_ids(self.catalog, ids)
        examples = set(label.positives) | set(label.negatives)
        for i in ids:
            if i not in found or found[i][0] not in examples:
                raise LabelError(f"remove_ids: image {i} is not an example of label {label.name!r}", "remove_ids")
        return {found[i][0] for i in ids}

    def _example_ids(self, label: StoredLabel) -> tuple[set[int], set[int]]:
        ids = store.ids_for_hashes(self.catalog, (*label.positives, *label.negatives), self.model_id)
        return ({ids[h] for h in label.positives if h in ids}, {ids[h] for h in label.negatives if h in ids})

    def _learn(self, name: str, positives: Sequence[str], negatives: Sequence[str], salt: int) -> Learned:
        """Weights from the examples' vectors under the current model (a label without positives is empty)."""
        ids = store.ids_for_hashes(self.catalog, (*positives, *negatives), self.model_id)
        pos_ids = [ids[h] for h in positives if h in ids]
        neg_ids = [ids[h] for h in negatives if h in ids]
        if not pos_ids:
            return Learned(self.model_id, None, 0.0, 1.0, None)
        vectors = self.catalog.embeddings(pos_ids + neg_ids)
        seed = zlib.crc32(name.casefold().encode()) ^ salt
        background = self._background(set(pos_ids) | set(neg_ids), len(vectors[pos_ids[0]]), seed)
        try:
            learned = learn_label(np.stack([vectors[i] for i in pos_ids]),
                                  np.stack([vectors[i] for i in neg_ids]) if neg_ids else np.empty((0, 0)),
                                  background, seed=seed)
        except LearningError as exc:
            raise LabelError(f"cannot learn label {name!r}: {exc}", "positive_ids", 409, "model_mismatch") from None
        quality = learned.quality.to_json() if learned.quality else None
        return Learned(self.model_id, learned.weights, learned.bias, learned.threshold, quality)

    def _background(self, exclude: set[int], dimension: int, seed: int) -> np.ndarray:
        """Vectors of up to `self.background` random library images that are not examples.

        Large libraries are sampled by drawing random ids below the highest one (ids have few gaps);
        small ones are simply listed."""
        rng = np.random.default_rng(seed)
        count, max_id = self.catalog.count_images(), self.catalog.max_image_id()
        wanted = min(self.background, max(count - len(exclude), 0))
        found: dict[int, np.ndarray] = {}
        if count > 4 * self.background:
            for _ in range(8):
                missing = wanted - len(found)
                if missing <= 0:
                    break
                draw = rng.integers(1, max_id + 1, size=int(missing * max_id / count * 1.2) + 16)
                fresh = [int(i) for i in np.unique(draw) if int(i) not in exclude and int(i) not in found]
                found.update(self.catalog.embeddings(fresh[:missing]))
        if len(found) < wanted:
            ids = self.catalog.image_ids()
            ids = ids[~np.isin(ids, np.fromiter(exclude, np.int64, len(exclude)))]
            chosen = rng.choice(ids, size=min(wanted, len(ids)), replace=False) if len(ids) else ids
            found = self.catalog.embeddings([int(i) for i in chosen])
        rows = [v for v in found.values() if len(v) == dimension]
        return np.stack(rows) if rows else np.zeros((0, dimension), np.float32)


def keep_labels_up_to_date(catalog: Catalog, model_id: str, step: str, index_dir: Path | None = None) -> None:
    """Run a LabelBook step ("score_new_images" or "catch_up") for a writer; a failure is logged, not raised:
    the images are committed whatever becomes of their label scores, and the next run catches up."""
    try:
        getattr(LabelBook(catalog, model_id, index_dir=index_dir), step)()
    except Exception:
        log.exception("custom labels could not be brought up to date (%s); the next indexing run retries", step)
