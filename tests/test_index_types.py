"""Every index type: the choice, filtered search that returns k results, removals, verify and rebuild."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import CATALOG_MODEL, env_for, new_image, ref, run_index

from indexer.settings import Settings
from lookalike.cli import cli
from storage.catalog import Catalog, NewImage
from storage.index_cost import ScanCost
from storage.index_factory import IndexConfig, choose_index
from storage.sync import build_from_catalog, needs_rebuild
from storage.vector_index import IndexStore, RemoveUnsupportedError, VectorIndex
from storage.verify import verify

DIM = 32


def clustered(n: int, dim: int = DIM, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("count", "dim", "budget_mb", "expected"),
    [
        (0, 1792, 2048, "Flat"),
        (40_000, 1792, 2048, "Flat"),
        (100_000, 1792, 2048, "IVF1264,Flat"),
        (1_000_000, 1792, 2048, "IVF4000,SQ8"),
        (10_000_000, 1792, 2048, "OPQ128,IVF12649,PQ128"),
        (60_000, 1792, 120, "IVF979,SQ8"),
        (60_000, 1792, 100, "OPQ256,IVF979,PQ256"),
        (100, 8, 2048, "Flat"),
    ],
)
def test_auto_choice_follows_size_and_budget(count: int, dim: int, budget_mb: int, expected: str) -> None:
    """On a machine where an exact scan were free, the vector count and memory budget alone decide."""
    free = ScanCost(0.0, measured=True)
    plan = choose_index(count, dim, IndexConfig(memory_budget_bytes=budget_mb * 2**20), free)
    assert plan.factory == expected and plan.reason


def test_explicit_factory_wins() -> None:
    assert choose_index(10, 8, IndexConfig(factory="HNSW32")).factory == "HNSW32"
    with pytest.raises(ValueError, match="not a FAISS factory string"):
        VectorIndex(8, CATALOG_MODEL, factory="Nonsense42")


# Training OPQ takes tens of seconds on two cores: those cases run in `make test`, not `make check`.
FACTORIES = ["Flat", "IVF32,Flat", "IVF32,SQ8", "HNSW16", pytest.param("OPQ8,IVF32,PQ8", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(4000)


_TRAINED: dict[str, faiss.Index] = {}


def built(factory: str, vectors: np.ndarray) -> VectorIndex:
    """An index of `vectors` (ids 1..n); each type is trained once per module on the full set (OPQ and PQ
    training take most of this module's time), then copied."""
    if factory not in _TRAINED:
        empty = VectorIndex(DIM, CATALOG_MODEL, factory=factory)
        empty.train(clustered(4000))
        _TRAINED[factory] = empty.index
    index = VectorIndex(DIM, CATALOG_MODEL, faiss.clone_index(_TRAINED[factory]), factory=factory,
                        trained_count=4000)
    index.add(np.arange(1, len(vectors) + 1), vectors)
    return index


def recall_at_10(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None,
                 config: IndexConfig) -> float:
    pool_ids = allowed if allowed is not None else np.arange(1, len(vectors) + 1)
    exact = np.argsort(-(queries @ vectors[pool_ids - 1].T), axis=1)[:, :10]
    found = index.search(queries, 10, allowed, config)
    hits = sum(len(set(pool_ids[row]) & {i for i, _ in res}) for row, res in zip(exact, found, strict=True))
    assert all(len(res) == 10 for res in found), "k results whenever k match"
    return hits / (10 * len(queries))


@pytest.mark.parametrize("factory", FACTORIES)
def test_search_and_filtered_search_for_every_type(factory: str, vectors: np.ndarray) -> None:
    index = built(factory, vectors)
    assert sorted(index.ids()) == list(range(1, 4001))
    config = IndexConfig(nprobe=8, ef_search=256)
    queries = clustered(50, seed=1)
    floor = 0.5 if "PQ" in factory else 0.9
    assert recall_at_10(index, vectors, queries, None, config) >= floor
    one_percent = np.random.default_rng(2).choice(np.arange(1, 4001), 40, replace=False)
    assert recall_at_10(index, vectors, queries, np.sort(one_percent), config) >= floor
    few = index.search(queries[:1], 10, np.array([7, 8, 9]), config)[0]
    assert sorted(i for i, _ in few) == [7, 8, 9]


@pytest.mark.parametrize("factory", FACTORIES)
def test_a_mapped_generation_answers_like_the_loaded_one(factory: str, vectors: np.ndarray, tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    manifest = store.publish(built(factory, vectors[:1500]), 1500)
    config = IndexConfig(nprobe=8, ef_search=256)
    queries = clustered(20, seed=3)
    loaded, mapped = store.load(manifest), store.load(manifest, mmap=True)
    assert loaded is not None and mapped is not None and mapped.count == 1500
    filtered = np.arange(1, 400)
    assert mapped.search(queries, 10, None, config) == loaded.search(queries, 10, None, config)
    assert mapped.search(queries, 10, filtered, config) == loaded.search(queries, 10, filtered, config)
    # The indexer publishes the next generation and deletes this file: the mapping stays readable.
    store.publish(built(factory, vectors[:1000]), 1000)
    assert not (tmp_path / "index" / manifest.file).exists()
    assert mapped.search(queries, 10, None, config) == loaded.search(queries, 10, None, config)


@pytest.mark.parametrize("factory", FACTORIES)
def test_removal_or_a_clear_refusal(factory: str, vectors: np.ndarray, tmp_path: Path) -> None:
    index = built(factory, vectors[:500])
    if factory.startswith("HNSW"):
        with pytest.raises(RemoveUnsupportedError):
            index.remove(np.array([1, 2]))
        return
    assert index.remove(np.array([1, 2, 99999])) == 2
    assert index.count == 498 and 1 not in set(index.ids())
    store = IndexStore(tmp_path)
    manifest = store.publish(index, high_water=500)
    loaded = store.load(manifest)
    assert loaded is not None and loaded.factory == factory and loaded.count == 498
    top = loaded.search(vectors[10:11], 1)[0][0]
    assert top[0] == 11


def fill_catalog(catalog: Catalog, vectors: np.ndarray) -> list[int]:
    images = [NewImage(f"{i:064x}", 1, 1, "PNG", CATALOG_MODEL, v, ((1, 0.9),)) for i, v in enumerate(vectors)]
    ids, _ = catalog.apply(images, [ref(f"/lib/{i}.png", i) for i in range(len(vectors))])
    return ids


def test_build_from_catalog_trains_and_retrains(tmp_path: Path, vectors: np.ndarray) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    fill_catalog(catalog, vectors[:2000])
    config = IndexConfig(exact_max_vectors=1000)
    index = build_from_catalog(catalog, CATALOG_MODEL, config)
    assert index is not None and index.factory == "IVF51,Flat" and index.trained_count == 2000
    assert index.count == 2000 and needs_rebuild(index, 2000, config) is None
    assert "grown" in (needs_rebuild(index, 8001, config) or "")
    flat = VectorIndex(DIM, CATALOG_MODEL)
    assert "call for a IVF" in (needs_rebuild(flat, 2000, config) or "")


def test_pipeline_keeps_every_index_type_consistent(settings_for: Callable[..., Settings], colour_library: Path,
                                                    tmp_path: Path) -> None:
    for factory in ("HNSW8", "IVF2,Flat"):
        settings = settings_for(storage={"index": factory, "data_dir": str(tmp_path / factory)})
        run_index(settings, colour_library)
        (colour_library / "red" / "red5.jpg").unlink()  # removal: HNSW must rebuild
        report, _ = run_index(settings, colour_library)
        assert report.removed == 1
        catalog = Catalog(settings.storage.resolved_database_url())
        result = verify(catalog, IndexStore(settings.storage.data_dir / "index"), model_id_of(settings))
        assert result.ok, result.problems
        assert result.factory == factory and result.index_vectors == 13
        shutil.copy(colour_library / "red" / "red4.jpg", colour_library / "red" / "red5.jpg")


def model_id_of(settings: Settings) -> str:
    from indexer.model import configured_model_id

    return configured_model_id(settings.model)


def test_verify_finds_each_disagreement_and_rebuild_repairs(colour_library: Path, tmp_path: Path,
                                                            tf1_module: Path) -> None:
    runner = CliRunner()
    env = env_for(tmp_path / "data", tf1_module)
    assert runner.invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0
    assert runner.invoke(cli, ["verify"], env=env).exit_code == 0
    store = IndexStore(tmp_path / "data" / "index")
    index = store.load(store.manifest())  # type: ignore[arg-type]
    assert index is not None
    index.remove(np.array([3]))
    index.add(np.array([999]), np.eye(index.dimension, dtype=np.float32)[:1])
    store.publish(index, high_water=14)
    result = runner.invoke(cli, ["verify", "--json"], env=env)
    assert result.exit_code == 1
    import json

    report = json.loads(result.stdout)
    assert report["missing_from_index"] == [3] and report["unknown_in_index"] == [999]
    assert len(report["problems"]) == 2

    rebuilt = runner.invoke(cli, ["rebuild"], env=env | {"LOOKALIKE_STORAGE__INDEX": "IVF2,Flat"})
    assert rebuilt.exit_code == 0 and "IVF2,Flat" in rebuilt.stdout
    ok = json.loads(runner.invoke(cli, ["verify", "--json"], env=env).stdout)
    assert ok["ok"] and ok["factory"] == "IVF2,Flat" and ok["index_vectors"] == 14

    (tmp_path / "data" / "index" / "manifest.json").unlink()
    gone = runner.invoke(cli, ["verify"], env=env)
    assert gone.exit_code == 1 and "no index manifest" in gone.stdout


def test_verify_flags_other_models_and_bad_vectors(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.apply([new_image(1), NewImage(f"{15:064x}", 1, 1, "PNG", "other@1", np.full(8, 2, np.float32), ())],
                  [ref("/lib/1.jpg", 1), ref("/lib/2.jpg", 0xF)])
    report = verify(catalog, IndexStore(tmp_path / "index"), CATALOG_MODEL)
    text = " ".join(report.problems)
    assert "other models" in text and "not unit length" in text and "no index manifest" in text
