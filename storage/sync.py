"""Keep the FAISS index consistent with the catalog: load it, check it, rebuild it from embeddings."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator

import numpy as np

from storage import staging
from storage.catalog import Catalog
from storage.index_calibration import RecallProbe, is_exact, measure_index, scan_cost_of
from storage.index_cost import SHRINK_MARGIN, IndexMeasurements, measured_scan_cost
from storage.index_factory import IndexConfig, choose_index, exact_is_candidate, ivf_of, nlist_for
from storage.vector_index import (
    IndexMismatchError,
    IndexStore,
    Manifest,
    RemoveUnsupportedError,
    VectorIndex,
    usable,
)

log = logging.getLogger(__name__)

# Train IVF quantisers on at most this many vectors per list (FAISS wants 39..256).
TRAIN_POINTS_PER_LIST = 64
# An index trained on a collection of n vectors is retrained once the collection passes this many times n.
RETRAIN_GROWTH = 4


def check_model(catalog: Catalog, model_id: str) -> None:
    """Refuse to mix vectors of different models in one catalog."""
    others = catalog.model_ids() - {model_id}
    if not others:
        return
    staged = staging.staged_count(catalog, model_id)
    if staged:
        raise IndexMismatchError(
            f"a reindex to model {model_id} is in progress: {staged:,} of {catalog.count_images():,} images are "
            f"embedded with it so far, and model {', '.join(sorted(others))} keeps serving until it completes. "
            "Continue it with `lookalike index --reindex PATH...` (nothing embedded so far is lost), or configure "
            "the current model again to index with it meanwhile."
        )
    raise IndexMismatchError(
        f"the catalog holds vectors from model {', '.join(sorted(others))}, but the configured model is "
        f"{model_id}. Vectors of different models cannot be compared: re-index with "
        "`lookalike index --reindex PATH...` (the current vectors keep serving until it completes), or point "
        "storage.data_dir at a new folder. If the catalog was just re-indexed with another model, restart this "
        f"program with that model configured.{_crop_hint(model_id, others)}"
    )


_CROP = re.compile(r"/crop=[0-9.e+-]+$")


def _crop_hint(model_id: str, others: set[str]) -> str:
    """When only the crop differs (model ids end in /crop=<fraction>, none for the whole square): say so."""
    if len(others) != 1 or _CROP.sub("", model_id) != _CROP.sub("", next(iter(others))):
        return ""
    found = _CROP.search(next(iter(others)))
    previous = found.group(0).removeprefix("/crop=") if found else "1.0"
    return (f" Only the crop differs: the catalog was indexed with model.crop_fraction {previous}; set it back "
            "to keep serving these vectors without re-indexing.")


Batches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # (ids, vectors) batches, from the start each call


def _training_sample(batches: Batches, count: int, wanted: int) -> np.ndarray:
    """About `wanted` vectors spread evenly over the collection."""
    step = max(1, count // max(wanted, 1))
    parts = [vectors[::step] for _, vectors in batches()]
    return np.concatenate(parts)[:wanted]


def build_from_vectors(batches: Batches, count: int, model_id: str, config: IndexConfig | None = None,
                       dimension: int | None = None) -> VectorIndex | None:
    """A fresh index of `count` vectors, of the type `config` chooses for that many, with its recall
    (and an IVF index's nprobe) measured on the collection's own vectors. Damaged vectors (NaN, not
    unit length) are kept out and counted.

    None when there are no vectors and no dimension is known.
    """
    config = config or IndexConfig()
    if count == 0 and dimension is None:
        return None
    if dimension is None:
        dimension = next(iter(batches()))[1].shape[1]
    exact, scan_cost = None, None
    if exact_is_candidate(count, dimension, config):
        exact = VectorIndex(dimension, model_id, factory="Flat")  # timed on the collection itself
        _add_usable(exact, batches)
        scan_cost = measured_scan_cost(exact.index)
    plan = choose_index(count, dimension, config, scan_cost)
    log.info("index for %d vectors of dimension %d: %s (%s)", count, dimension, plan.factory, plan.reason)
    if exact is not None and plan.factory == "Flat":
        exact.measured = IndexMeasurements(0, 1.0, plan.exact_scan_ms)
        return exact
    exact = None
    index = VectorIndex(dimension, model_id, factory=plan.factory)
    if not index.is_trained:
        ivf = ivf_of(index.index)
        lists = ivf.nlist if ivf is not None else nlist_for(count)
        index.train(_training_sample(_usable_only(batches), count, max(lists * TRAIN_POINTS_PER_LIST, 10_000)))
        index.trained_count = count
    probe = None if is_exact(plan.factory) or count == 0 else RecallProbe.sample(_usable_only(batches), count)
    _add_usable(index, batches, probe)
    index.measured = measure_index(index, probe, config, plan.exact_scan_ms)
    return index


def _add_usable(index: VectorIndex, batches: Batches, probe: RecallProbe | None = None) -> None:
    """Add every usable vector to `index` (and to `probe`'s exact answers); damaged ones are counted and logged."""
    damaged: list[int] = []
    for ids, vectors in batches():
        keep = usable(vectors)
        damaged.extend(int(i) for i in ids[~keep])
        index.add(ids[keep], vectors[keep])
        if probe is not None:
            probe.see(ids[keep], vectors[keep])
    index.left_out = len(damaged)
    if damaged:
        log.error("%d stored vectors are damaged (NaN or not unit length) and were kept out of the index: images "
                  "%s; `lookalike verify` lists them, `lookalike index --reindex PATH...` embeds them again",
                  len(damaged), damaged[:20])


def _usable_only(batches: Batches) -> Batches:
    def filtered() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, vectors in batches():
            keep = usable(vectors)
            yield ids[keep], vectors[keep]

    return filtered


def build_from_catalog(catalog: Catalog, model_id: str, config: IndexConfig | None = None,
                       dimension: int | None = None) -> VectorIndex | None:
    """A fresh index of every catalog embedding (None when the catalog is empty and no dimension is known)."""
    return build_from_vectors(catalog.iter_embeddings, catalog.count_images(), model_id, config, dimension)


def _kind(factory: str) -> str:
    return re.sub(r"IVF\d+", "IVF", factory)


def needs_rebuild(index: VectorIndex, count: int, config: IndexConfig) -> str | None:
    """Why the index should be rebuilt for a collection of `count` vectors, or None.

    An inverted file built because exact search was too slow stays until the exact scan costs
    well under the budget, so that a measurement near it does not switch types at every publish.
    """
    plan = choose_index(count, index.dimension, config, scan_cost_of(index, count, config))
    wanted = plan.factory
    settled = (wanted == "Flat" and "IVF" in index.factory and plan.exact_scan_ms is not None
               and plan.exact_scan_ms > SHRINK_MARGIN * config.exact_budget_ms)
    if _kind(wanted) != _kind(index.factory) and not settled:
        return f"{count:,} vectors call for a {wanted} index instead of {index.factory} ({plan.reason})"
    if index.trained_count and count > RETRAIN_GROWTH * index.trained_count:
        return (f"the collection has grown from {index.trained_count:,} to {count:,} vectors since the index "
                "was trained: retraining keeps recall up")
    return None


def is_consistent(manifest: Manifest, catalog: Catalog, model_id: str) -> bool:
    return (
        manifest.model_id == model_id
        and manifest.count + manifest.left_out == catalog.count_images()
        and manifest.high_water == catalog.max_image_id()
    )


def _catch_up(catalog: Catalog, store: IndexStore, manifest: Manifest, model_id: str) -> VectorIndex | None:
    """The published generation brought level with the catalog, when only some images differ.

    After a crash between catalog commits and the next publish, the catalog is a few batches
    ahead: adding those vectors (and dropping any removed since) is far cheaper than rebuilding
    the whole index. None when the generation cannot be used (other model, damaged file, an
    index type that cannot remove): the caller rebuilds.
    """
    if manifest.model_id != model_id:
        return None
    index = store.load(manifest)
    if index is None:
        return None
    try:
        held = index.ids()
    except TypeError:
        return None
    wanted = catalog.image_ids()
    stale = np.setdiff1d(held, wanted, assume_unique=True)
    missing = np.setdiff1d(wanted, held, assume_unique=True)
    try:
        index.remove(stale)
    except RemoveUnsupportedError:
        return None
    damaged = 0
    for start in range(0, len(missing), 10_000):
        chunk = missing[start:start + 10_000]
        found = catalog.embeddings(chunk.tolist())
        vectors = np.stack([found[int(i)] for i in chunk])
        keep = usable(vectors)
        damaged += int(np.sum(~keep))
        index.add(chunk[keep], vectors[keep])
    index.left_out = damaged  # a damaged vector is never held, so every one of them was among `missing`
    if index.count + index.left_out != catalog.count_images():
        return None
    log.warning("index generation %d was out of step with the catalog: added %d vectors, removed %d",
                manifest.generation, len(missing), len(stale))
    return index


def open_index(
    catalog: Catalog, store: IndexStore, model_id: str, *, publish_repairs: bool, config: IndexConfig | None = None
) -> tuple[VectorIndex | None, Manifest | None]:
    """The current index, repaired from the catalog when it is missing or out of step.

    A repair is published as a new generation only when `publish_repairs` (the indexer, which
    holds the writer lock); readers repair in memory.
    """
    check_model(catalog, model_id)
    manifest = store.manifest()
    if manifest is not None and is_consistent(manifest, catalog, model_id):
        index = store.load(manifest)
        if index is not None:
            if publish_repairs:
                store.remove_stale(keep=manifest.file)
            return index, manifest
    if manifest is None and catalog.count_images() == 0:
        return None, None
    caught_up = _catch_up(catalog, store, manifest, model_id) if manifest is not None else None
    if caught_up is not None:
        if publish_repairs:
            manifest = store.publish(caught_up, catalog.max_image_id())
        return caught_up, manifest
    log.warning(
        "index in %s is missing or out of step with the catalog (manifest %s); rebuilding it from the "
        "catalog's %d embeddings",
        store.directory,
        "absent" if manifest is None else f"generation {manifest.generation}, {manifest.count} vectors",
        catalog.count_images(),
    )
    dimension = manifest.dimension if manifest is not None and manifest.model_id == model_id else None
    index = build_from_catalog(catalog, model_id, config, dimension)
    if index is None:
        return None, manifest
    if publish_repairs:
        manifest = store.publish(index, catalog.max_image_id())
    return index, manifest
