"""Keep the FAISS index consistent with the catalog: load it, check it, rebuild it from embeddings."""

from __future__ import annotations

import logging

from storage.catalog import Catalog
from storage.vector_index import IndexMismatchError, IndexStore, Manifest, VectorIndex

log = logging.getLogger(__name__)


def check_model(catalog: Catalog, model_id: str) -> None:
    """Refuse to mix vectors of different models in one catalog."""
    others = catalog.model_ids() - {model_id}
    if others:
        raise IndexMismatchError(
            f"the catalog holds vectors from model {', '.join(sorted(others))}, but the configured model is "
            f"{model_id}. Vectors of different models cannot be compared: re-index with "
            "`lookalike index --reindex PATH...`, or point storage.data_dir at a new folder."
        )


def build_from_catalog(catalog: Catalog, model_id: str, dimension: int | None = None) -> VectorIndex | None:
    """A fresh index of every catalog embedding; None when the catalog is empty and no dimension is known."""
    index: VectorIndex | None = VectorIndex(dimension, model_id) if dimension else None
    for ids, vectors in catalog.iter_embeddings():
        if index is None:
            index = VectorIndex(vectors.shape[1], model_id)
        index.add(ids, vectors)
    return index


def is_consistent(manifest: Manifest, catalog: Catalog, model_id: str) -> bool:
    return (
        manifest.model_id == model_id
        and manifest.count == catalog.count_images()
        and manifest.high_water == catalog.max_image_id()
    )


def open_index(
    catalog: Catalog, store: IndexStore, model_id: str, *, publish_repairs: bool
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
            return index, manifest
    if manifest is None and catalog.count_images() == 0:
        return None, None
    log.warning(
        "index in %s is missing or out of step with the catalog (manifest %s); rebuilding it from the "
        "catalog's %d embeddings",
        store.directory,
        "absent" if manifest is None else f"generation {manifest.generation}, {manifest.count} vectors",
        catalog.count_images(),
    )
    same_model = manifest is not None and manifest.model_id == model_id
    index = build_from_catalog(catalog, model_id, manifest.dimension if same_model else None)
    if index is None:
        return None, manifest
    if publish_repairs:
        manifest = store.publish(index, catalog.max_image_id())
    return index, manifest
