"""auto chooses by the cost of exact search, timed on the collection, and measures an IVF index's nprobe
for recall when it builds it; the generation keeps both, searches use them, and stats show them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    CATALOG_MODEL,
    RED,
    clustered,
    colour_image,
    env_for,
    fill_catalog,
    make_settings,
    run_index,
    write_image,
)

from indexer.model import configured_model_id
from indexer.settings import Settings
from lookalike.cli import cli
from search_api.app import create_app
from storage.catalog import Catalog
from storage.index_calibration import index_summary
from storage.index_cost import IndexMeasurements, ScanCost, modelled_scan_cost, time_exact_scan
from storage.index_factory import DEFAULT_NPROBE, IndexConfig, choose_index, ivf_of
from storage.sync import build_from_catalog, needs_rebuild
from storage.vector_index import MANIFEST, IndexStore, VectorIndex

DIM = 32
TINY = IndexConfig(exact_budget_ms=1e-6)  # any real scan costs more


def recall_at_10(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, config: IndexConfig) -> float:
    """Against exact search over `vectors` (ids 1..n)."""
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1
    found = index.search(queries, 10, None, config)
    return sum(len(set(row.tolist()) & {i for i, _ in res}) for row, res in zip(exact, found, strict=True)) / exact.size


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, np.ndarray]:
    """1,500 clustered vectors (ids 1..1500) in a SQLite catalog."""
    catalog = Catalog(f"sqlite:///{tmp_path_factory.mktemp('choice') / 'c.db'}")
    vectors = clustered(1500, DIM)
    assert fill_catalog(catalog, vectors) == list(range(1, 1501))
    return catalog, vectors


def test_the_scan_cost_decides_between_exact_and_ivf() -> None:
    slow = ScanCost(0.01, measured=True)  # 10 ms per 1,000 vectors
    assert choose_index(900, DIM, IndexConfig(), slow).factory == "Flat"
    over = choose_index(1100, DIM, IndexConfig(), slow)
    assert over.factory == "IVF28,Flat" and "over storage.exact_budget_ms (10 ms)" in over.reason
    assert over.exact_scan_ms == pytest.approx(11.0)
    # storage.exact_max_vectors stays an upper bound: a free scan does not make 60,000 vectors exact.
    free = ScanCost(0.0, measured=True)
    assert choose_index(60_000, DIM, IndexConfig(), free).factory.startswith("IVF")
    assert choose_index(60_000, DIM, IndexConfig(exact_max_vectors=100_000), free).factory == "Flat"
    # Without a timed scan, a conservative bandwidth model: B4's 1792-d vectors go IVF near 5,600.
    model = modelled_scan_cost(1792)
    assert not model.measured and choose_index(5_000, 1792, IndexConfig()).factory == "Flat"
    assert choose_index(7_000, 1792, IndexConfig()).factory.startswith("IVF")


def test_a_tiny_budget_forces_ivf_on_a_small_collection_with_measured_nprobe_and_recall(
        collection: tuple[Catalog, np.ndarray], tmp_path: Path) -> None:
    catalog, vectors = collection
    exact = build_from_catalog(catalog, CATALOG_MODEL, IndexConfig(exact_budget_ms=1e6))
    assert exact is not None and exact.factory == "Flat"
    assert exact.measured.recall_at_10 == 1.0 and exact.measured.exact_scan_ms is not None
    assert exact.measured.exact_scan_ms > 0

    index = build_from_catalog(catalog, CATALOG_MODEL, TINY)
    assert index is not None and index.factory == "IVF38,Flat" and index.count == 1500
    measured = index.measured
    assert 1 < measured.nprobe <= 38, "20 clusters over 38 lists: one list is not enough"
    assert measured.recall_at_10 is not None and measured.recall_at_10 >= 0.98
    assert measured.exact_scan_ms is not None and measured.exact_scan_ms > TINY.exact_budget_ms
    # Queries the build never saw, from the same collection, find their neighbours as well.
    assert recall_at_10(index, vectors, clustered(100, DIM, seed=7), IndexConfig()) >= 0.95

    store = IndexStore(tmp_path / "index")
    store.publish(index, catalog.max_image_id())
    on_disk = json.loads((tmp_path / "index" / MANIFEST).read_text())
    assert (on_disk["nprobe"], on_disk["recall_at_10"]) == (measured.nprobe, measured.recall_at_10)
    assert on_disk["exact_scan_ms"] == measured.exact_scan_ms
    loaded = store.load(store.manifest())  # type: ignore[arg-type]
    assert loaded is not None and loaded.measured == measured


def test_searches_use_the_measured_nprobe_unless_storage_nprobe_is_set(collection: tuple[Catalog, np.ndarray],
                                                                       tmp_path: Path) -> None:
    catalog, vectors = collection
    store = IndexStore(tmp_path / "index")
    store.publish(build_from_catalog(catalog, CATALOG_MODEL, TINY), catalog.max_image_id())  # type: ignore[arg-type]
    manifest = store.manifest()
    assert manifest is not None
    loaded = store.load(manifest, mmap=True)
    assert loaded is not None
    queries = clustered(100, DIM, seed=8)
    auto = loaded.search(queries, 10, None, IndexConfig())
    assert auto == loaded.search(queries, 10, None, IndexConfig(nprobe=manifest.nprobe))
    assert loaded.search_config(IndexConfig()).nprobe == manifest.nprobe != DEFAULT_NPROBE
    one = recall_at_10(loaded, vectors, queries, IndexConfig(nprobe=1))
    assert one < recall_at_10(loaded, vectors, queries, IndexConfig())
    # A generation built with storage.nprobe set measures recall at that nprobe instead of choosing one.
    fixed = build_from_catalog(catalog, CATALOG_MODEL, IndexConfig(exact_budget_ms=1e-6, nprobe=1))
    assert fixed is not None and fixed.measured.nprobe == 1
    assert fixed.measured.recall_at_10 == pytest.approx(one, abs=0.1)
    assert fixed.measured.recall_at_10 < (manifest.recall_at_10 or 0)


def test_a_library_that_grows_past_the_budget_turns_ivf_and_stays_ivf(tmp_path: Path) -> None:
    dim = 256
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    vectors = clustered(2100, dim)
    fill_catalog(catalog, vectors[:100])
    small = build_from_catalog(catalog, CATALOG_MODEL, IndexConfig(exact_budget_ms=1e6))
    assert small is not None and small.factory == "Flat"
    # A budget halfway (geometrically) between the scans of 100 and of 2,100 vectors, timed here.
    large = faiss.IndexFlatIP(dim)
    large.add(vectors)
    budget = math.sqrt(time_exact_scan(small.index) * time_exact_scan(large))
    config = IndexConfig(exact_budget_ms=budget)
    assert needs_rebuild(small, 100, config) is None

    # The indexer commits 2,000 more images to the catalog and adds them to its live index ...
    ids = fill_catalog(catalog, vectors[100:], first=100)
    small.add(np.asarray(ids), vectors[100:])
    # ... and before it publishes, asks whether the index still suits the collection.
    reason = needs_rebuild(small, 2100, config)
    assert reason is not None and "IVF" in reason and "over storage.exact_budget_ms" in reason
    grown = build_from_catalog(catalog, CATALOG_MODEL, config)
    assert grown is not None and grown.factory.startswith("IVF") and grown.measured.nprobe >= 1
    assert needs_rebuild(grown, 2100, config) is None

    # Near the budget it stays IVF; only once exact search costs well under the budget does it turn back.
    scan = grown.measured.exact_scan_ms
    assert scan is not None
    assert needs_rebuild(grown, 2100, IndexConfig(exact_budget_ms=scan * 1.2)) is None
    assert "Flat" in (needs_rebuild(grown, 2100, IndexConfig(exact_budget_ms=scan * 3)) or "")


def test_a_manifest_written_before_the_measurements_still_loads(collection: tuple[Catalog, np.ndarray],
                                                                tmp_path: Path) -> None:
    catalog, vectors = collection
    store = IndexStore(tmp_path / "index")
    store.publish(build_from_catalog(catalog, CATALOG_MODEL, TINY), catalog.max_image_id())  # type: ignore[arg-type]
    path = tmp_path / "index" / MANIFEST
    old = {k: v for k, v in json.loads(path.read_text()).items()
           if k not in ("nprobe", "recall_at_10", "exact_scan_ms")}
    path.write_text(json.dumps(old))
    manifest = store.manifest()
    assert manifest is not None and manifest.measurements() == IndexMeasurements()
    loaded = store.load(manifest)
    assert loaded is not None and loaded.count == 1500
    assert loaded.search_config(IndexConfig()).nprobe == DEFAULT_NPROBE
    queries = clustered(20, DIM, seed=9)
    assert loaded.search(queries, 10) == loaded.search(queries, 10, None, IndexConfig(nprobe=DEFAULT_NPROBE))
    summary = index_summary(manifest.factory, manifest.measurements(), IndexConfig())
    assert summary["nprobe"] == DEFAULT_NPROBE and summary["nprobe_source"] == "default"
    assert summary["recall_at_10"] is None


def test_the_indexer_switches_at_the_next_publish_and_stats_show_the_choice(
        settings_for: Callable[..., Settings], colour_library: Path, tmp_path: Path, tf1_module: Path) -> None:
    settings = settings_for(storage={"exact_budget_ms": 1e-6})
    store = IndexStore(settings.storage.data_dir / "index")
    run_index(settings, colour_library)
    first = store.manifest()
    assert first is not None and first.factory == "Flat" and first.count == 14  # too few to train IVF

    # The catalog grows (photos under another root) and the library gains a photo: the next run publishes.
    catalog = Catalog(settings.storage.resolved_database_url())
    fill_catalog(catalog, clustered(150, 16), model=configured_model_id(settings.model),
                 first=1000, root="/elsewhere")
    catalog.close()
    write_image(colour_library / "red" / "new.jpg", colour_image(RED, seed=99), quality=95)
    run_index(settings, colour_library)
    grown = store.manifest()
    assert grown is not None and grown.count == 165 and grown.factory.startswith("IVF")
    assert grown.nprobe >= 1 and grown.recall_at_10 is not None and grown.exact_scan_ms is not None

    runner = CliRunner()
    env = env_for(settings.storage.data_dir, tf1_module)
    stats = json.loads(runner.invoke(cli, ["stats", "--json"], env=env).stdout)
    assert stats["index_type"] == grown.factory and stats["nprobe"] == grown.nprobe
    assert stats["nprobe_source"] == "measured" and stats["recall_at_10"] == round(grown.recall_at_10, 4)
    assert stats["vectors"] == 165 and stats["exact_budget_ms"] == 10.0
    text = runner.invoke(cli, ["stats"], env=env).stdout
    assert f"index_type: {grown.factory}" in text and "nprobe_source: measured" in text
    fixed = json.loads(runner.invoke(cli, ["stats", "--json"], env=env | {
        "LOOKALIKE_STORAGE__NPROBE": str(grown.nprobe + 1)}).stdout)
    assert fixed["nprobe"] == grown.nprobe + 1 and fixed["nprobe_source"] == "storage.nprobe"
    assert fixed["recall_at_10"] is None  # measured for another nprobe

    api = create_app(settings).test_client().get("/api/v1/stats").get_json()
    assert {k: api[k] for k in ("index_type", "nprobe", "nprobe_source", "recall_at_10", "exact_scan_ms")} == {
        k: stats[k] for k in ("index_type", "nprobe", "nprobe_source", "recall_at_10", "exact_scan_ms")}
    assert api["exact_budget_ms"] == 1e-6 and api["vectors"] == 165


def test_stats_of_an_exact_index_and_of_no_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", "https://example.invalid/model")
    catalog = Catalog(settings.storage.resolved_database_url())  # an empty catalog: nothing indexed yet
    client = create_app(settings).test_client()
    empty = client.get("/api/v1/stats").get_json()
    assert empty["index_type"] is None and empty["nprobe"] is None and empty["recall_at_10"] is None
    mid = configured_model_id(settings.model)
    fill_catalog(catalog, clustered(300, DIM), model=mid)
    index = build_from_catalog(catalog, mid, settings.storage.index_config())
    assert index is not None
    IndexStore(settings.storage.data_dir / "index").publish(index, catalog.max_image_id())
    catalog.close()
    exact = create_app(settings).test_client().get("/api/v1/stats").get_json()
    assert exact["index_type"] == "Flat" and exact["nprobe"] is None and exact["recall_at_10"] == 1.0
    assert exact["exact_scan_ms"] is not None and 0 < exact["exact_scan_ms"] <= 10.0
    assert ivf_of(index.index) is None


THREADS_SEEN: list[int] = []


class FaissThreadsSeen(faiss.IndexIDMap2):
    """A real FAISS index that notes the calling thread's OpenMP setting in THREADS_SEEN when searched."""

    def search(self, *args: Any, **kwargs: Any) -> Any:
        THREADS_SEEN.append(faiss.omp_get_max_threads())
        return super().search(*args, **kwargs)


def test_a_single_query_searches_on_one_faiss_thread_and_batches_keep_theirs() -> None:
    """A second OpenMP thread does no work for one query but its wake-up costs milliseconds on a busy machine."""
    vectors = clustered(500, DIM)
    flat = faiss.IndexFlatIP(DIM)
    spy = FaissThreadsSeen(flat)
    spy.add_with_ids(vectors, np.arange(1, 501))
    THREADS_SEEN.clear()
    index = VectorIndex(DIM, CATALOG_MODEL, spy, factory="Flat")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        assert index.search(vectors[:1], 5)[0][0][0] == 1
        assert index.search(vectors[:1], 5, np.array([3, 4]))[0][0][0] in (3, 4)
        index.search(vectors[:4], 5)
        assert THREADS_SEEN == [1, 1, 2]
        assert faiss.omp_get_max_threads() == 2  # restored for the caller
    finally:
        faiss.omp_set_num_threads(before)


def test_a_recall_target_out_of_reach_takes_the_smallest_nprobe_near_the_best_and_says_why(
        collection: tuple[Catalog, np.ndarray], caplog: pytest.LogCaptureFixture) -> None:
    catalog, _ = collection
    config = IndexConfig(factory="IVF16,SQ4", recall_target=1.0)  # 4-bit codes cannot rank every neighbour right
    with caplog.at_level("WARNING", logger="storage.index_calibration"):
        index = build_from_catalog(catalog, CATALOG_MODEL, config)
    assert index is not None and index.measured.recall_at_10 is not None
    assert index.measured.recall_at_10 < 1.0 and 1 <= index.measured.nprobe < 16
    assert "compressed vectors cap it" in caplog.text and "reaches only" in caplog.text
