"""Keep the FAISS index consistent with the catalog: load it, check it, rebuild it from embeddings."""

from __future__ import annotations

import logging
import re

import numpy as np

from storage.catalog import Catalog
from storage.index_calibration import RecallProbe, exact_candidate, is_exact, measure_index, scan_cost_of
from storage.index_cost import SHRINK_MARGIN, IndexMeasurements
from storage.index_factory import IndexConfig, choose_index, ivf_of, nlist_for
from storage.vector_index import IndexMismatchError, IndexStore, Manifest, RemoveUnsupportedError, VectorIndex

log = logging.getLogger(__name__)

# Train IVF quantisers on at most this many vectors per list (FAISS wants 39..256).
TRAIN_POINTS_PER_LIST = 64
# An index trained on a collection of n vectors is retrained once the collection passes this many times n.
RETRAIN_GROWTH = 4


def check_model(catalog: Catalog, model_id: str) -> None:
    """Refuse to mix vectors of different models in one catalog."""
    others = catalog.model_ids() - {model_id}
    if others:
        raise IndexMismatchError(
            f"the catalog holds vectors from model {', '.join(sorted(others))}, but the configured model is "
            f"{model_id}. Vectors of different models cannot be compared: re-index with "
            "`lookalike index --reindex PATH...`, or point storage.data_dir at a new folder."
        )


def _training_sample(catalog: Catalog, count: int, wanted: int) -> np.ndarray:
    """About `wanted` catalog embeddings spread evenly over the collection."""
    step = max(1, count // max(wanted, 1))
    parts = [vectors[::step] for _, vectors in catalog.iter_embeddings()]
    return np.concatenate(parts)[:wanted]


def build_from_catalog(catalog: Catalog, model_id: str, config: IndexConfig | None = None,
                       dimension: int | None = None) -> VectorIndex | None:
    """A fresh index of every catalog embedding, of the type `config` chooses for the collection's size,
    with its recall (and an IVF index's nprobe) measured on the collection's own vectors.

    None when the catalog is empty and no dimension is known.
    """
    config = config or IndexConfig()
    count = catalog.count_images()
    if count == 0 and dimension is None:
        return None
    if dimension is None:
        dimension = next(iter(catalog.iter_embeddings(batch=1)))[1].shape[1]
    exact, scan_cost = exact_candidate(catalog, model_id, count, dimension, config)
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
        index.train(_training_sample(catalog, count, max(lists * TRAIN_POINTS_PER_LIST, 10_000)))
        index.trained_count = count
    probe = None if is_exact(plan.factory) or count == 0 else RecallProbe.sample(catalog)
    for ids, vectors in catalog.iter_embeddings():
        index.add(ids, vectors)
        if probe is not None:
            probe.see(ids, vectors)
    index.measured = measure_index(index, probe, config, plan.exact_scan_ms)
    return index


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
        and manifest.count == catalog.count_images()
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
    for start in range(0, len(missing), 10_000):
        chunk = missing[start:start + 10_000]
        vectors = catalog.embeddings(chunk.tolist())
        index.add(chunk, np.stack([vectors[int(i)] for i in chunk]))
    if index.count != catalog.count_images():
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
    same_model = manifest is not None and manifest.model_id == model_id
    index = build_from_catalog(catalog, model_id, config, manifest.dimension if same_model else None)
    if index is None:
        return None, manifest
    if publish_repairs:
        manifest = store.publish(index, catalog.max_image_id())
    return index, manifest
