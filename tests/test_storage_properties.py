"""Property tests: random sequences of catalog writes, index updates, rebuilds, publishes and searches
against a brute-force numpy model of what the catalog and index must hold.

The real Catalog (SQLite), VectorIndex, IndexStore and sync functions are driven by Hypothesis'
state machine. The collection grows past the `auto` threshold, so rebuilds switch the index from
exact search (Flat) to an inverted file (IVF) and back: Flat results must equal brute force;
IVF results must be existing ids with their true scores, exact when every list is probed, and
of reasonable recall with few lists probed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from storage.catalog import Catalog, FileRef, NewImage
from storage.index_factory import IndexConfig
from storage.sync import build_from_catalog, open_index
from storage.vector_index import IndexStore, VectorIndex

MODEL = "property-model@64"
DIM = 12
# auto: exact up to 60 vectors, then IVF with a handful of lists; one probed list by default.
CONFIG = IndexConfig(exact_max_vectors=60, nprobe=1)
EVERY_LIST = IndexConfig(exact_max_vectors=60, nprobe=10**6)
SCORE_TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """Indexes of a few hundred vectors gain nothing from OpenMP threads, and on a busy machine
    their spin-waiting makes every call slow."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit_vectors(count: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class CatalogAndIndex(RuleBasedStateMachine):
    """The model: which files exist, which image (content) each names, and each image's vector."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lookalike-props-"))
        self.catalog = Catalog(f"sqlite:///{self.tmp / 'catalog.db'}")
        self.store = IndexStore(self.tmp / "index")
        self.index = VectorIndex(DIM, MODEL)
        self.vectors: dict[int, np.ndarray] = {}
        self.hashes: dict[int, str] = {}
        self.files: dict[str, int] = {}
        self.counter = 0
        self.recall_found = 0
        self.recall_wanted = 0

    def teardown(self) -> None:
        self.catalog.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.recall_wanted >= 50:
            assert self.recall_found / self.recall_wanted >= 0.5, (self.recall_found, self.recall_wanted)

    # --- writes ---------------------------------------------------------------------------

    @initialize(count=st.integers(0, 120), seed=st.integers(0, 2**16))
    def start(self, count: int, seed: int) -> None:
        if count:
            self.add_images(count, seed)

    @rule(count=st.integers(1, 30), seed=st.integers(0, 2**16))
    def add_images(self, count: int, seed: int) -> None:
        vectors = unit_vectors(count, seed)
        hashes = [f"{self.counter + i:064x}" for i in range(count)]
        paths = [f"/lib/{self.counter + i}.png" for i in range(count)]
        self.counter += count
        images = [NewImage(h, 8, 8, "PNG", MODEL, v, ((1, 0.9), (2, 0.1))) for h, v in zip(hashes, vectors,
                                                                                           strict=True)]
        ids, orphans = self.catalog.apply(images, [FileRef(p, "/lib", 1, 1, h) for p, h in zip(paths, hashes,
                                                                                                strict=True)])
        assert orphans == [] and len(set(ids)) == count and not set(ids) & set(self.vectors)
        self.index.add(np.asarray(ids), vectors)
        for image_id, h, p, v in zip(ids, hashes, paths, vectors, strict=True):
            self.vectors[image_id], self.hashes[image_id], self.files[p] = v, h, image_id

    @precondition(lambda self: self.vectors)
    @rule(pick=st.integers(0, 10**6))
    def add_duplicate_file(self, pick: int) -> None:
        """Another file with content already in the catalog: linked, no new image."""
        image_id = sorted(self.vectors)[pick % len(self.vectors)]
        path = f"/lib/copy{self.counter}.png"
        self.counter += 1
        ids, orphans = self.catalog.apply(files=[FileRef(path, "/lib", 1, 1, self.hashes[image_id])])
        assert ids == [] and orphans == []
        self.files[path] = image_id

    @precondition(lambda self: self.files)
    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=12))
    def remove_files(self, picks: list[int]) -> None:
        paths = sorted(self.files)
        removed = sorted({paths[p % len(paths)] for p in picks})
        _, orphans = self.catalog.apply(removed_paths=removed)
        for path in removed:
            del self.files[path]
        expected = sorted(set(self.vectors) - set(self.files.values()))
        assert orphans == expected
        assert self.index.remove(np.asarray(orphans, dtype=np.int64)) == len(orphans)
        for image_id in orphans:
            del self.vectors[image_id], self.hashes[image_id]

    @rule()
    def rebuild(self) -> None:
        rebuilt = build_from_catalog(self.catalog, MODEL, CONFIG, DIM)
        assert rebuilt is not None
        wanted = "Flat" if len(self.vectors) <= CONFIG.exact_max_vectors or len(self.vectors) < 78 else "IVF"
        assert rebuilt.factory.startswith(wanted), (rebuilt.factory, len(self.vectors))
        self.index = rebuilt

    @precondition(lambda self: len(self.vectors) >= 40)
    @rule(lists=st.sampled_from([2, 3, 5]))
    def rebuild_as_ivf(self, lists: int) -> None:
        """An inverted file chosen by factory string, as `storage.index` allows, at any size."""
        rebuilt = build_from_catalog(self.catalog, MODEL, IndexConfig(factory=f"IVF{lists},Flat", nprobe=1), DIM)
        assert rebuilt is not None and rebuilt.factory == f"IVF{lists},Flat"
        self.index = rebuilt

    @rule(query_seed=st.integers(0, 2**16))
    def publish_and_load(self, query_seed: int) -> None:
        previous = self.store.manifest()
        manifest = self.store.publish(self.index, self.catalog.max_image_id())
        assert manifest.generation == (previous.generation + 1 if previous else 1)
        assert manifest.count == len(self.vectors) and manifest.factory == self.index.factory
        loaded = self.store.load(manifest)
        assert loaded is not None and sorted(loaded.ids()) == sorted(self.vectors)
        query = unit_vectors(1, query_seed)
        assert loaded.search(query, 10, config=CONFIG) == self.index.search(query, 10, config=CONFIG)
        assert sorted(p.name for p in self.store.directory.iterdir()) == sorted([manifest.file, "manifest.json"])

    @rule()
    def reopen(self) -> None:
        """What every writer and reader does at start: load the current generation or rebuild it."""
        index, manifest = open_index(self.catalog, self.store, MODEL, publish_repairs=True, config=CONFIG)
        if not self.vectors and manifest is None:
            assert index is None
            return
        assert index is not None and manifest is not None
        self.index = index

    # --- reads --------------------------------------------------------------------------

    def truth(self, query: np.ndarray, k: int, allowed: set[int] | None) -> list[tuple[int, float]]:
        ids = sorted(i for i in self.vectors if allowed is None or i in allowed)
        if not ids:
            return []
        scores = np.stack([self.vectors[i] for i in ids]) @ query[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(ids[j], float(scores[j])) for j in order]

    def check_hits(self, hits: list[tuple[int, float]], query: np.ndarray, k: int, allowed: set[int] | None) -> None:
        ids = [i for i, _ in hits]
        assert len(ids) == len(set(ids)) and len(ids) <= k
        assert set(ids) <= set(self.vectors) and (allowed is None or set(ids) <= allowed)
        for image_id, score in hits:
            assert abs(score - float(self.vectors[image_id] @ query[0])) < SCORE_TOLERANCE
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)

    def assert_exact(self, hits: list[tuple[int, float]], truth: list[tuple[int, float]]) -> None:
        assert len(hits) == len(truth)
        assert np.allclose([s for _, s in hits], [s for _, s in truth], atol=SCORE_TOLERANCE)
        assert [i for i, _ in hits] == [i for i, _ in truth]

    @rule(query_seed=st.integers(0, 2**16), k=st.integers(1, 25),
          filter_picks=st.none() | st.lists(st.integers(0, 10**6), max_size=15))
    def search(self, query_seed: int, k: int, filter_picks: list[int] | None) -> None:
        query = unit_vectors(1, query_seed)
        allowed = None
        if filter_picks is not None:
            known = sorted(self.vectors) or [1]
            # some allowed ids may not exist (deleted since): they must never come back
            allowed = {known[p % len(known)] + (p % 3 == 0) * 10**6 for p in filter_picks}
        allowed_array = None if allowed is None else np.asarray(sorted(allowed), dtype=np.int64)
        truth = self.truth(query, k, allowed)
        event(f"searched a {self.index.factory.split(',')[0].rstrip('0123456789')} index")
        hits = self.index.search(query, k, allowed_array, CONFIG)[0]
        self.check_hits(hits, query, k, allowed)
        probed_all = self.index.search(query, k, allowed_array, EVERY_LIST)[0]
        self.assert_exact(probed_all, truth)
        if self.index.factory == "Flat":
            self.assert_exact(hits, truth)
        else:
            self.recall_found += len({i for i, _ in hits} & {i for i, _ in truth})
            self.recall_wanted += len(truth)

    @invariant()
    def index_holds_exactly_the_catalog(self) -> None:
        assert self.index.count == len(self.vectors) == self.catalog.count_images()
        assert sorted(self.index.ids()) == sorted(self.vectors)
        assert self.catalog.count_files() == len(self.files)


CatalogAndIndex.TestCase.settings = settings(
    max_examples=20, stateful_step_count=20, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCatalogAndIndex = pytest.mark.slow(CatalogAndIndex.TestCase)
