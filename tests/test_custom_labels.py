"""Custom labels in the catalog (SQLite and PostgreSQL): learning, scoring, examples, model changes, races."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CATALOG_MODEL

from indexer.custom_labels import LabelBook
from indexer.label_learning import fit_logistic, learn_label, ranking_auc
from indexer.label_names import LabelError, check_name, split_label_filters
from indexer.labels import resolve_classes
from storage import labels as store
from storage.catalog import Catalog, FileRef, NewImage
from storage.index_factory import IndexConfig
from storage.label_queries import ids_with_labels, scored_members
from storage.label_scan import published_vectors
from storage.sync import build_from_catalog
from storage.vector_index import IndexStore

DIM = 8
CLUSTERS = 3
PER_CLUSTER = 12


def clustered(seed: int, cluster: int, dim: int = DIM) -> np.ndarray:
    centre = np.random.default_rng(1000 + cluster).normal(size=dim)
    v = centre + 0.15 * np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def add_images(catalog: Catalog, seeds: range, model: str = CATALOG_MODEL) -> list[int]:
    """Images whose vectors fall into CLUSTERS clusters by seed (cluster = seed % CLUSTERS)."""
    images = [NewImage(f"{s:064x}", 10, 10, "JPEG", model, clustered(s, s % CLUSTERS), ((1, 0.9),)) for s in seeds]
    files = [FileRef(f"/lib/{s}.jpg", "/lib", 1, 1, f"{s:064x}") for s in seeds]
    ids, _ = catalog.apply(images, files)
    return ids


@pytest.fixture
def library(catalog: Catalog) -> list[int]:
    """36 images: ids[i] is in cluster i % 3."""
    return add_images(catalog, range(CLUSTERS * PER_CLUSTER))


def cluster_ids(ids: list[int], cluster: int) -> set[int]:
    return {image_id for i, image_id in enumerate(ids) if i % CLUSTERS == cluster}


def teach(book: LabelBook, name: str, positives: list[int], negatives: list[int] | None = None) -> store.StoredLabel:
    label = book.create(name, positives, negatives)
    assert book.rescore(label.id)
    return book.get(name)


def members(book: LabelBook, name: str) -> set[int]:
    label = book.get(name)
    return set(ids_with_labels(book.catalog, [label.id]).tolist())


def test_a_label_taught_from_three_images_finds_its_cluster(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    label = book.create("cluster zero", [library[0], library[3], library[6]])
    assert label.scoring and book.state(label) == "scoring"
    assert book.to_json(label)["count"] == 0  # scores come with rescore
    assert book.rescore(label.id)
    label = book.get("CLUSTER ZERO")  # names are found ignoring case
    assert book.state(label) == "ready"
    assert members(book, "cluster zero") == cluster_ids(library, 0)
    shown = book.to_json(label)
    assert shown["count"] == PER_CLUSTER and shown["positive_ids"] == [library[0], library[3], library[6]]
    # A third of this library has the label, so unseen positives among the background pull the estimate down.
    assert shown["quality"]["folds"] == 3 and 0.7 <= shown["quality"]["auc"] <= 1.0
    listed, total = book.members(label, 0, 100)
    scores = [m.score for m in listed]
    assert scores == sorted(scores, reverse=True) and total == len(listed)
    assert [m.member for m in listed[:PER_CLUSTER]] == [True] * PER_CLUSTER
    assert {m.example for m in listed if m.image_id in (library[0], library[3], library[6])} == {"positive"}
    assert book.rescore(label.id) is False  # nothing left to do


def test_names_are_checked(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    teach(book, "Rex", [library[0]])
    for name, code, status in [("rex", "duplicate_label", 409), ("tabby cat", "imagenet_class_name", 400),
                               ("n02123045", "imagenet_class_name", 400), ("281", "invalid_label", 400),
                               ("a/b", "invalid_label", 400), ("tab\tname", "invalid_label", 400),
                               ("x" * 65, "invalid_label", 400), ("  ", "invalid_label", 400)]:
        with pytest.raises(LabelError) as caught:
            book.create(name, [library[1]])
        assert (caught.value.status, caught.value.code, caught.value.field) == (status, code, "name"), name
    assert check_name("  café receipts (2024)  ") == "café receipts (2024)"
    assert check_name("dog") == "dog"  # a concept, not a class name: `label:dog` cannot be mistaken for it


@pytest.mark.parametrize(("positives", "negatives", "field", "words"), [
    ([], None, "positive_ids", "at least one"),
    ([999_999], None, "positive_ids", "no indexed image has id 999999"),
    ([0], None, "positive_ids", "no image has id 0"),
    ("1,2", None, "positive_ids", "list of image ids"),
    ([True], None, "positive_ids", "list of image ids"),
    ([1], [1], "negative_ids", "in both"),
    ([1], [5, 999_999], "negative_ids", "999999"),
])
def test_bad_examples_name_their_field(catalog: Catalog, library: list[int], positives: object,
                                       negatives: object, field: str, words: str) -> None:
    with pytest.raises(LabelError, match=words) as caught:
        LabelBook(catalog, CATALOG_MODEL).create("label", positives, negatives)
    assert caught.value.field == field and caught.value.status == 400
    assert store.all_labels(catalog) == []


def test_examples_decide_for_themselves_and_flip(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    outsider = library[1]  # cluster 1
    label = teach(book, "zero", [library[0], library[3], outsider])
    assert outsider in members(book, "zero")  # a positive example always has its label
    label = book.change("zero", add_negative_ids=[outsider])  # rejecting a positive moves it over
    assert label.negatives == (f"{1:064x}",) and len(label.positives) == 2 and label.scoring
    book.rescore(label.id)
    assert outsider not in members(book, "zero") and {library[0], library[3]} <= members(book, "zero") <= \
        cluster_ids(library, 0)
    label = book.change("zero", remove_ids=[outsider])
    assert label.negatives == () and label.positives == (f"{0:064x}", f"{3:064x}")
    with pytest.raises(LabelError, match="not an example") as caught:
        book.change("zero", remove_ids=[library[2]])
    assert caught.value.field == "remove_ids"
    with pytest.raises(LabelError, match="named twice"):
        book.change("zero", add_positive_ids=[library[2]], remove_ids=[library[2]])


def test_threshold_moves_within_the_stored_scores_without_rescoring(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    label = teach(book, "zero", [library[0], library[3], library[6]])
    floor = label.scored_floor
    assert floor < label.threshold
    raised = book.change("zero", threshold=0.99)
    assert not raised.scoring and raised.version == label.version and not raised.threshold_auto
    assert members(book, "zero") == {i for i, s in scored_members(catalog, label.id, 0, 100)[0] if s >= 0.99}
    lowered = book.change("zero", threshold=floor / 4)  # below what is stored: new scores needed
    assert lowered.scoring
    book.rescore(lowered.id)
    assert book.get("zero").scored_floor < floor / 4
    back = book.change("zero", threshold=None)
    assert back.threshold_auto and back.threshold == back.learning["default_threshold"]
    with pytest.raises(LabelError, match="threshold must be a number from 0 to 1") as caught:
        book.change("zero", threshold=1.5)
    assert caught.value.field == "threshold"


def test_new_images_are_scored_as_they_are_committed(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    label = teach(book, "zero", [library[0], library[3], library[6]])
    new = add_images(catalog, range(100, 106))  # seeds 102 and 105 fall in cluster 0
    assert members(book, "zero") == cluster_ids(library, 0)  # not scored yet
    assert book.score_new_images() == 1
    assert members(book, "zero") == cluster_ids(library, 0) | {new[2], new[5]}
    assert book.get("zero").scored_max_id == max(new)
    assert book.score_new_images() == 0
    assert book.get("zero").version == label.version


def test_a_removed_example_is_forgotten_and_the_label_relearned_or_emptied(catalog: Catalog,
                                                                          library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    before = teach(book, "zero", [library[0], library[3], library[6]], [library[1]])
    catalog.apply(removed_paths=["/lib/0.jpg", "/lib/1.jpg"])  # the files left the library
    assert book.forget_missing_examples() == ["zero"]
    label = book.get("zero")
    assert label.positives == (f"{3:064x}", f"{6:064x}") and label.negatives == () and label.scoring
    assert not np.array_equal(label.weights, before.weights)  # relearned from what is left
    book.catch_up()
    assert {library[3], library[6]} <= members(book, "zero") <= cluster_ids(library, 0) - {library[0]}
    catalog.apply(removed_paths=["/lib/3.jpg", "/lib/6.jpg"])
    book.catch_up()
    label = book.get("zero")
    assert book.state(label) == "empty" and label.weights is None
    assert book.to_json(label)["count"] == 0 and members(book, "zero") == set()
    assert book.resolve(["zero"]) == (label.id,)  # an empty label filters to nothing, it is not an error


def test_a_label_of_another_model_is_refused_until_relearned(catalog: Catalog, library: list[int]) -> None:
    old = LabelBook(catalog, CATALOG_MODEL)
    teach(old, "zero", [library[0], library[3], library[6]])
    catalog.clear()  # re-indexing with another model starts from an empty catalog...
    new_ids = add_images(catalog, range(CLUSTERS * PER_CLUSTER), model="other-model@64")  # ...same files
    book = LabelBook(catalog, "other-model@64")
    label = book.get("zero")
    assert book.state(label) == "stale" and label.positives == (f"{0:064x}", f"{3:064x}", f"{6:064x}")
    shown = book.to_json(label)
    assert shown["count"] == 0 and "relearn" in shown["message"] and shown["positive_ids"] == [new_ids[i] for i in
                                                                                              (0, 3, 6)]
    with pytest.raises(LabelError, match="learned with model test-model@64") as caught:
        book.resolve(["zero"])
    assert (caught.value.status, caught.value.code) == (409, "label_needs_relearning")
    with pytest.raises(LabelError, match="relearn"):
        book.members(label, 0, 10)
    assert book.score_new_images() == 0  # nothing is scored with the old model's weights
    relearned = book.change("zero", relearn=True)
    assert relearned.model_id == "other-model@64" and relearned.positives == label.positives
    book.rescore(relearned.id)
    assert members(book, "zero") == cluster_ids(new_ids, 0)


def test_a_rescoring_of_an_older_version_never_overwrites_a_newer_one(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    first = book.create("zero", [library[0]])
    second = book.change("zero", add_positive_ids=[library[3]])
    assert second.version == first.version + 1
    assert not store.replace_scores(catalog, first, 0.1, 99, np.asarray([library[1]]), np.asarray([0.9]))
    assert not store.save_label(catalog, first, None, [], [], 0.3)  # a stale writer changes nothing
    assert book.get("zero").positives == second.positives
    assert book.rescore(second.id) and members(book, "zero") <= cluster_ids(library, 0)
    # Tail scoring only appends to the scores of the version it read.
    current = book.get("zero")
    assert not store.append_scores(catalog, first, 1000, np.asarray([library[1]]), np.asarray([0.9]))
    assert store.append_scores(catalog, current, current.scored_max_id, np.empty(0, np.int64), np.empty(0))


def test_a_claimed_rescoring_is_left_to_its_owner(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    label = book.create("zero", [library[0]])
    assert store.claim_rescoring(catalog, label)  # another process works on it
    assert book.rescore(label.id) is False and book.pending() == [label.id]
    store.release_claim(catalog, label.id)
    assert book.rescore(label.id) and book.pending() == []


def test_custom_labels_never_leak_into_imagenet_filters(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    teach(book, "dog", [library[0]])
    assert resolve_classes(["label:dog"]) is None  # a custom label is not the concept "dog"
    assert resolve_classes(["dog", "label:dog"]) == resolve_classes(["dog"])
    assert split_label_filters(["dog", "label:dog", " LABEL: my rex ", "1"]) == ["dog", "my rex"]
    with pytest.raises(LabelError, match="unknown custom label 'cat'") as caught:
        book.resolve(["cat"])
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "unknown_class", "class")
    with pytest.raises(LabelError, match="needs a label name"):
        book.resolve([""])


def test_deleting_a_label_leaves_the_images(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    label = teach(book, "zero", [library[0]])
    book.delete("ZERO")
    assert book.all() == [] and catalog.count_images() == len(library)
    assert ids_with_labels(catalog, [label.id]).size == 0
    with pytest.raises(LabelError) as caught:
        book.delete("zero")
    assert (caught.value.status, caught.value.code) == (404, "unknown_label")


def test_scores_go_with_their_images(catalog: Catalog, library: list[int]) -> None:
    book = LabelBook(catalog, CATALOG_MODEL)
    label = teach(book, "zero", [library[0]])
    catalog.apply(removed_paths=["/lib/3.jpg"])  # cluster 0, not an example
    assert library[3] not in members(book, "zero")
    assert library[3] not in {i for i, _ in scored_members(catalog, label.id, 0, 100)[0]}


def test_the_learner_matches_a_reference_fit_and_ranks_held_out_positives() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.8).astype(float)
    w, b = fit_logistic(x, y, np.ones(200), c=10.0)
    # The optimum of the regularised loss: its gradient vanishes.
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.abs(x.T @ (p - y) + w / 10.0).max() < 1e-3 and abs((p - y).sum()) < 1e-3
    assert ranking_auc(np.asarray([0.9, 0.5]), np.asarray([0.1, 0.5, 0.95])) == pytest.approx((2 + 1.5) / 6)
    positives = np.stack([clustered(s, 0, 16) for s in range(5)])
    background = np.stack([clustered(s, 1 + s % 2, 16) for s in range(5, 105)])
    learned = learn_label(positives, np.zeros((0, 16)), background)
    assert learned.quality is not None and learned.quality.auc > 0.95 and learned.quality.folds == 5
    assert learned.scores(np.stack([clustered(500, 0, 16)]))[0] > learned.threshold
    assert learned.scores(np.stack([clustered(501, 1, 16)]))[0] < learned.threshold


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat", "IVF2,SQ8", "HNSW8"])
def test_scores_from_the_published_index_match_the_catalog(catalog: Catalog, library: list[int], tmp_path: Path,
                                                           factory: str) -> None:
    store_dir = tmp_path / "index"
    index = build_from_catalog(catalog, CATALOG_MODEL, IndexConfig(factory=factory))
    IndexStore(store_dir).publish(index, catalog.max_image_id())
    newer = add_images(catalog, range(200, 203))  # committed after the generation: the catalog's tail
    catalog.apply(removed_paths=["/lib/6.jpg"])  # deleted after it: still in the index
    plain = LabelBook(catalog, CATALOG_MODEL)
    fast = LabelBook(catalog, CATALOG_MODEL, index_dir=store_dir)
    scanned = published_vectors(store_dir, catalog, CATALOG_MODEL)
    assert (scanned is not None) == (factory != "HNSW8")  # HNSW cannot be scanned exhaustively
    label = fast.create("zero", [library[0], library[3]])
    fast.rescore(label.id)
    from_index = dict(scored_members(catalog, label.id, 0, 1000)[0])
    plain.change("zero", threshold=0.1)
    plain.change("zero", threshold=None)  # same weights, new version: scored again, from the catalog
    plain.rescore(label.id)
    from_catalog = dict(scored_members(catalog, label.id, 0, 1000)[0])
    assert library[6] not in from_index and set(from_index) == set(from_catalog)
    assert {newer[1]} <= set(from_index)  # seed 201 is in cluster 0
    tolerance = 1e-2 if "SQ8" in factory else 1e-5
    assert max(abs(from_index[i] - from_catalog[i]) for i in from_index) < tolerance


def test_an_index_missing_images_is_not_used_for_scoring(catalog: Catalog, library: list[int], tmp_path: Path) -> None:
    index = build_from_catalog(catalog, CATALOG_MODEL)
    index.remove(np.asarray(library[:2], dtype=np.int64))  # a generation out of step with the catalog
    IndexStore(tmp_path).publish(index, catalog.max_image_id())
    assert published_vectors(tmp_path, catalog, CATALOG_MODEL) is None
    assert published_vectors(tmp_path, catalog, "another-model@64") is None


def test_concurrent_changes_lose_no_example(catalog: Catalog, library: list[int]) -> None:
    import threading

    book = LabelBook(catalog, CATALOG_MODEL)
    book.create("zero", [library[0]])
    added = [library[3], library[6], library[9], library[12]]
    outcomes: dict[int, str] = {}

    def add(image_id: int) -> None:
        try:
            LabelBook(catalog, CATALOG_MODEL).change("zero", add_positive_ids=[image_id])
            outcomes[image_id] = "ok"
        except LabelError as exc:
            outcomes[image_id] = exc.code

    threads = [threading.Thread(target=add, args=(i,)) for i in added]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(outcomes.values()) <= {"ok", "conflict"} and "ok" in outcomes.values()
    label = book.get("zero")
    hashes = store.hashes_for_ids(catalog, [i for i, result in outcomes.items() if result == "ok"])
    assert {h for h, _ in hashes.values()} <= set(label.positives)  # every accepted change is kept
    assert f"{0:064x}" in label.positives


def test_an_abandoned_rescoring_is_taken_over(catalog: Catalog, library: list[int]) -> None:
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from storage.label_schema import CustomLabelRow

    book = LabelBook(catalog, CATALOG_MODEL)
    label = book.create("zero", [library[0]])
    assert store.claim_rescoring(catalog, label)  # its process was killed before it finished
    assert book.rescore(label.id) is False
    long_ago = datetime.now(timezone.utc) - timedelta(seconds=store.CLAIM_SECONDS + 5)
    with catalog.session() as s, s.begin():
        s.execute(update(CustomLabelRow).where(CustomLabelRow.id == label.id).values(scoring_since=long_ago))
    assert book.rescore(label.id) and not book.get("zero").scoring


def test_too_many_examples_are_refused(catalog: Catalog, library: list[int]) -> None:
    with pytest.raises(LabelError, match="at most 1000") as caught:
        LabelBook(catalog, CATALOG_MODEL).create("many", list(range(1, 1002)))
    assert caught.value.field == "positive_ids"
