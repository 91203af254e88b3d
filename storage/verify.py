"""Prove the index and the catalog agree: same ids, same model, same dimension, unit vectors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from storage.catalog import Catalog
from storage.vector_index import IndexStore

SHOWN_IDS = 20
NORM_TOLERANCE = 1e-3


@dataclass
class VerifyReport:
    catalog_images: int = 0
    index_vectors: int = 0
    generation: int | None = None
    factory: str | None = None
    problems: list[str] = field(default_factory=list)
    missing_from_index: list[int] = field(default_factory=list)  # first few
    unknown_in_index: list[int] = field(default_factory=list)  # first few

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, **asdict(self)}


def verify(catalog: Catalog, store: IndexStore, model_id: str) -> VerifyReport:
    """Check the current index generation against the catalog; every disagreement is a problem."""
    report = VerifyReport(catalog_images=catalog.count_images())
    models = catalog.model_ids()
    if models - {model_id}:
        report.problems.append(f"catalog holds vectors of other models: {sorted(models - {model_id})} "
                               f"(configured: {model_id})")
    catalog_ids: list[np.ndarray] = []
    dims: set[int] = set()
    bad_norms = 0
    for ids, vectors in catalog.iter_embeddings():
        catalog_ids.append(ids)
        dims.add(vectors.shape[1])
        bad_norms += int(np.sum(np.abs(np.linalg.norm(vectors, axis=1) - 1) > NORM_TOLERANCE))
    if bad_norms:
        report.problems.append(f"{bad_norms} catalog vectors are not unit length")
    if len(dims) > 1:
        report.problems.append(f"catalog vectors have several dimensions: {sorted(dims)}")
    manifest = store.manifest()
    if manifest is None:
        if report.catalog_images:
            report.problems.append(f"no index manifest in {store.directory}, but the catalog has "
                                   f"{report.catalog_images} images")
        return report
    report.generation, report.factory = manifest.generation, manifest.factory
    index = store.load(manifest)
    if index is None:
        report.problems.append(f"index file {store.directory / manifest.file} is missing or unreadable")
        return report
    report.index_vectors = index.count
    if manifest.model_id != model_id:
        report.problems.append(f"index was built with model {manifest.model_id}, configured model is {model_id}")
    if dims and dims != {index.dimension}:
        report.problems.append(f"index dimension {index.dimension} differs from catalog dimension {sorted(dims)}")
    in_catalog = np.concatenate(catalog_ids) if catalog_ids else np.empty(0, np.int64)
    in_index = index.ids()
    missing = np.setdiff1d(in_catalog, in_index)
    unknown = np.setdiff1d(in_index, in_catalog)
    if len(np.unique(in_index)) != len(in_index):
        report.problems.append(f"{len(in_index) - len(np.unique(in_index))} ids appear twice in the index")
    if len(missing):
        report.problems.append(f"{len(missing)} catalog images are not in the index")
        report.missing_from_index = [int(i) for i in missing[:SHOWN_IDS]]
    if len(unknown):
        report.problems.append(f"{len(unknown)} index vectors have no catalog image")
        report.unknown_in_index = [int(i) for i in unknown[:SHOWN_IDS]]
    return report
