"""Prove the catalog is sound and the index agrees with it; report each kind of damage on its own.

Checks: the database's integrity; every stored vector finite, of unit length and of one
dimension; one model everywhere; the index file unchanged since it was written (checksum);
the same ids in the index and the catalog; the index's vectors equal to the catalog's
(exactly, by reconstruction, for index types that keep vectors; by self-query recall for
quantised ones); and no score outside [-1, 1].
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from storage import staging
from storage.catalog import Catalog
from storage.errors import RESTORE_HINT, CatalogDamagedError
from storage.index_factory import IndexConfig, is_exact
from storage.integrity import database_problems, orphan_images
from storage.vector_index import IndexDamagedError, IndexStore, VectorIndex, usable

SHOWN_IDS = 20
EXACT_TOLERANCE = 1e-6  # reconstructed float32 vectors are the stored bytes: any real difference is damage
RECALL_SAMPLE = 1000  # catalog vectors searched for themselves in a quantised index
SCORE_SAMPLE = 200  # self-queries checking the scores of an exact index
MIN_SELF_RECALL = 0.8  # below this share of vectors finding themselves in their top 10, a quantised index is damaged

REINDEX_FIX = "`lookalike index --reindex PATH...` embeds the images again from their files"
REBUILD_FIX = "`lookalike rebuild` rebuilds the index from the catalog"


@dataclass
class Damage:
    kind: str
    count: int
    detail: str
    fix: str
    ids: list[int] = field(default_factory=list)  # the first few affected image ids, where ids apply


@dataclass
class VerifyReport:
    catalog_images: int = 0
    index_vectors: int = 0
    generation: int | None = None
    factory: str | None = None
    problems: list[str] = field(default_factory=list)  # one line per damage
    missing_from_index: list[int] = field(default_factory=list)  # first few
    unknown_in_index: list[int] = field(default_factory=list)  # first few
    damage: list[Damage] = field(default_factory=list)
    reindex: str | None = None  # a reindex under way (not damage)

    @property
    def ok(self) -> bool:
        return not self.damage

    def add(self, kind: str, count: int, detail: str, fix: str, ids: Iterable[int] = ()) -> None:
        shown = [int(i) for i in list(ids)[:SHOWN_IDS]]
        self.damage.append(Damage(kind, count, detail, fix, shown))
        self.problems.append(detail)

    def kinds(self) -> list[str]:
        return [d.kind for d in self.damage]

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, **asdict(self)}


def verify_data(database_url: str, store: IndexStore, model_id: str, config: IndexConfig | None = None
                ) -> VerifyReport:
    """Open the catalog (never creating one) and verify it; a catalog too damaged to open is reported, not raised."""
    try:
        catalog = Catalog(database_url, create=False)
    except CatalogDamagedError as exc:
        report = VerifyReport()
        report.add("database", 1, str(exc), RESTORE_HINT)
        _check_index_file(report, store)
        return report
    try:
        return verify(catalog, store, model_id, config)
    finally:
        catalog.close()


def verify(catalog: Catalog, store: IndexStore, model_id: str, config: IndexConfig | None = None) -> VerifyReport:
    """Check the catalog and the current index generation; every kind of damage is reported separately."""
    report = VerifyReport()
    broken = database_problems(catalog)
    if broken:
        report.add("database", len(broken), f"the catalog database {catalog.location} is damaged: "
                   + "; ".join(broken[:5]), RESTORE_HINT)
    try:
        _verify_contents(report, catalog, store, model_id, config or IndexConfig())
    except CatalogDamagedError as exc:
        if "database" not in report.kinds():
            report.add("database", 1, str(exc), RESTORE_HINT)
        _check_index_file(report, store)
    return report


def _verify_contents(report: VerifyReport, catalog: Catalog, store: IndexStore, model_id: str,
                     config: IndexConfig) -> None:
    report.catalog_images = catalog.count_images()
    models = catalog.model_ids()
    if models - {model_id}:
        report.add("model", len(models - {model_id}), f"catalog holds vectors of other models: "
                   f"{sorted(models - {model_id})} (configured: {model_id})", REINDEX_FIX)
    staged = staging.staged_count(catalog)
    if staged:
        report.reindex = (f"a reindex is in progress ({staged:,} images embedded with "
                          f"{', '.join(sorted(staging.staged_models(catalog)))}); the current vectors serve until "
                          "it completes")
    orphans = orphan_images(catalog)
    if orphans:
        report.add("orphan_images", len(orphans), f"{len(orphans)} catalog images have no file", RESTORE_HINT,
                   orphans)
    sound_ids, dims = _check_vectors(report, catalog)
    manifest = store.manifest()
    if manifest is None:
        if report.catalog_images:
            report.add("index_missing", 1, f"no index manifest in {store.directory}, but the catalog has "
                       f"{report.catalog_images} images", REBUILD_FIX)
        return
    report.generation, report.factory = manifest.generation, manifest.factory
    _check_index_file(report, store)
    index = store.load(manifest, check_digest=False)
    if index is None:
        report.add("index_unreadable", 1, f"index file {store.directory / manifest.file} is missing or unreadable",
                   REBUILD_FIX)
        return
    report.index_vectors = index.count
    if manifest.model_id != model_id:
        report.add("index_model", 1, f"index was built with model {manifest.model_id}, configured model is "
                   f"{model_id}", REBUILD_FIX)
    if dims and dims != {index.dimension}:
        report.add("index_dimension", 1, f"index dimension {index.dimension} differs from catalog dimension "
                   f"{sorted(dims)}", REBUILD_FIX)
        return
    in_index = _check_ids(report, index, sound_ids)
    if is_exact(index.factory):
        _compare_exactly(report, catalog, index, set(in_index.tolist()))
    _check_self_queries(report, catalog, index, config, exact=is_exact(index.factory))


def _check_vectors(report: VerifyReport, catalog: Catalog) -> tuple[np.ndarray, set[int]]:
    """Ids of the sound catalog vectors; damaged ones are reported by kind."""
    sound: list[np.ndarray] = []
    not_finite: list[np.ndarray] = []
    not_unit: list[np.ndarray] = []
    dims: set[int] = set()
    for ids, vectors in catalog.iter_embeddings():
        dims.add(vectors.shape[1])
        finite = np.isfinite(vectors).all(axis=1)
        good = usable(vectors)
        sound.append(ids[good])
        not_finite.append(ids[~finite])
        not_unit.append(ids[finite & ~good])
    for kind, found, what in (("vectors_not_finite", not_finite, "are not finite (NaN or infinite)"),
                              ("vectors_not_unit", not_unit, "are not unit length")):
        ids = np.concatenate(found) if found else np.empty(0, np.int64)
        if len(ids):
            report.add(kind, len(ids), f"{len(ids)} catalog vectors {what}: images {ids[:SHOWN_IDS].tolist()}; "
                       "they are kept out of the index, and those images are never returned", REINDEX_FIX, ids)
    if len(dims) > 1:
        report.add("vector_dimensions", len(dims), f"catalog vectors have several dimensions: {sorted(dims)}",
                   REINDEX_FIX)
    return (np.concatenate(sound) if sound else np.empty(0, np.int64)), dims


def _check_index_file(report: VerifyReport, store: IndexStore) -> None:
    manifest = store.manifest()
    if manifest is not None and store.digest_matches(manifest) is False:
        report.add("index_checksum", 1, f"index file {store.directory / manifest.file} does not have the checksum it "
                   "was written with: its bytes changed since", REBUILD_FIX)


def _check_ids(report: VerifyReport, index: VectorIndex, sound_ids: np.ndarray) -> np.ndarray:
    in_index = index.ids()
    unique = np.unique(in_index)
    if len(unique) != len(in_index):
        report.add("ids_twice_in_index", len(in_index) - len(unique),
                   f"{len(in_index) - len(unique)} ids appear twice in the index", REBUILD_FIX)
    missing = np.setdiff1d(sound_ids, unique)
    unknown = np.setdiff1d(unique, sound_ids)
    if len(missing):
        report.add("ids_missing_from_index", len(missing), f"{len(missing)} catalog images are not in the index",
                   REBUILD_FIX, missing)
        report.missing_from_index = [int(i) for i in missing[:SHOWN_IDS]]
    if len(unknown):
        report.add("ids_unknown_in_index", len(unknown), f"{len(unknown)} index vectors have no sound catalog "
                   "vector", REBUILD_FIX, unknown)
        report.unknown_in_index = [int(i) for i in unknown[:SHOWN_IDS]]
    return unique


def _compare_exactly(report: VerifyReport, catalog: Catalog, index: VectorIndex, held: set[int]) -> None:
    """The index's own copy of each vector, reconstructed, must be the catalog's."""
    differ: list[int] = []
    for ids, vectors in catalog.iter_embeddings():
        keep = np.fromiter((int(i) in held for i in ids), bool, len(ids)) & usable(vectors)
        if not keep.any():
            continue
        rebuilt = index.index.reconstruct_batch(np.ascontiguousarray(ids[keep], dtype=np.int64))
        with np.errstate(invalid="ignore"):
            wrong = ~(np.abs(rebuilt - vectors[keep]).max(axis=1) <= EXACT_TOLERANCE)
        differ.extend(int(i) for i in ids[keep][wrong])
    if differ:
        report.add("index_vectors_differ", len(differ), f"{len(differ)} index vectors differ from the catalog's "
                   f"(images {differ[:SHOWN_IDS]})", REBUILD_FIX, differ)


def _check_self_queries(report: VerifyReport, catalog: Catalog, index: VectorIndex, config: IndexConfig,
                        exact: bool) -> None:
    """Search with a sample of catalog vectors: scores stay in [-1, 1], and each finds itself."""
    ids = index.ids()
    if not len(ids):
        return
    wanted = SCORE_SAMPLE if exact else RECALL_SAMPLE
    sample = np.sort(ids)[:: max(1, len(ids) // wanted)][:wanted]
    found = catalog.embeddings(sample.tolist())
    sample = np.asarray([i for i in sample if int(i) in found], np.int64)
    if not len(sample):
        return
    queries = np.stack([found[int(i)] for i in sample])
    good = usable(queries)
    sample, queries = sample[good], queries[good]
    try:
        hits = index.search(queries, min(10, index.count), config=config)
    except IndexDamagedError as exc:
        report.add("index_scores", 1, f"searching the index gives impossible scores: {exc}", REBUILD_FIX)
        return
    if exact:
        return
    recall = float(np.mean([any(i == int(q) for i, _ in row) for q, row in zip(sample, hits, strict=True)]))
    if recall < MIN_SELF_RECALL:
        report.add("index_recall", len(sample), f"only {recall:.0%} of {len(sample)} catalog vectors find themselves "
                   f"among their 10 nearest in the {index.factory} index", REBUILD_FIX)
