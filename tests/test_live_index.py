"""A server follows the catalog's tail: images committed after the served generation are searchable at once,
with class filters, and removed ones disappear, without any new generation being published."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import BLUE, GREEN, catalog_of, colour_image, jpeg, run_index, search
from model_fixtures import GREEN_CLASS

import search_api.service as service_module
from indexer.model import Embedder, top_k
from indexer.settings import Settings
from search_api import create_app
from search_api.current import service_of
from storage.catalog import FileRef, NewImage
from storage.live_index import LiveIndex, Tail
from storage.vector_index import IndexStore, VectorIndex


def commit_without_publishing(settings: Settings, images: dict[str, bytes]) -> list[int]:
    """What an upload or a watcher does between publishes: new rows in the catalog, no new generation."""
    from indexer.images import decode_image

    m = settings.model
    embedder = Embedder.from_settings(m)
    pixels = np.stack([decode_image(data, m.image_size, 10**8, crop_fraction=m.effective_crop_fraction()).pixels
                       for data in images.values()])
    out = embedder.embed(pixels)
    catalog = catalog_of(settings)
    try:
        news, refs = [], []
        for (path, data), vector, predictions in zip(images.items(), out.features, top_k(out.probabilities),
                                                     strict=True):
            digest = f"{abs(hash(data)):064x}"[:64]
            news.append(NewImage(digest, 8, 8, "JPEG", embedder.model_id, vector, predictions))
            refs.append(FileRef(path, str(Path(path).parent), len(data), 1, digest))
        ids, _ = catalog.apply(new_images=news, files=refs)
        return ids
    finally:
        catalog.close()


def test_images_committed_after_the_generation_are_found_and_filtered(
        indexed: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "RELOAD_CHECK_SECONDS", 0.0)
    app = create_app(indexed)
    client = app.test_client()
    generation = IndexStore(indexed.storage.data_dir / "index").manifest()
    green = jpeg(colour_image(GREEN, seed=501, accent=(20, 250, 20)))
    assert len(search(client, green, "?k=20").get_json()["results"]) == 14

    blue = jpeg(colour_image(BLUE, seed=502))
    new_ids = commit_without_publishing(indexed, {str(tmp_path / "late" / "g1.jpg"): green,
                                                  str(tmp_path / "late" / "b1.jpg"): blue})
    body = search(client, green, "?k=20").get_json()
    assert len(body["results"]) == 16 and body["results"][0]["id"] == new_ids[0]  # the same picture, found first
    filtered = search(client, green, f"?k=10&class={GREEN_CLASS}").get_json()["results"]
    assert new_ids[0] in [r["id"] for r in filtered] and new_ids[1] not in [r["id"] for r in filtered]
    assert client.get(f"/api/v1/images/{new_ids[1]}/similar?k=3").status_code == 200
    stats = client.get("/api/v1/stats").get_json()
    assert stats["vectors"] == stats["images"] == 16 and stats["generation"] == generation.generation

    catalog = catalog_of(indexed)  # the file of the new green image is removed again
    try:
        catalog.apply(removed_paths=[str(tmp_path / "late" / "g1.jpg")])
    finally:
        catalog.close()
    assert new_ids[0] not in [r["id"] for r in search(client, green, "?k=20").get_json()["results"]]
    assert IndexStore(indexed.storage.data_dir / "index").manifest().generation == generation.generation


def test_a_new_generation_takes_over_what_the_tail_held(indexed: Settings, colour_library: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "RELOAD_CHECK_SECONDS", 0.0)
    app = create_app(indexed)
    client = app.test_client()
    green = jpeg(colour_image(GREEN, seed=601))
    (colour_library / "late.jpg").write_bytes(green)
    commit_without_publishing(indexed, {str(colour_library / "late.jpg"): green})
    assert len(search(client, green, "?k=30").get_json()["results"]) == 15
    service = service_of(app)
    assert service._tail is not None and service._tail.count == 1
    run_index(indexed, colour_library)  # publishes a generation that holds it
    results = search(client, green, "?k=30").get_json()["results"]
    assert len(results) == 15 and len({r["id"] for r in results}) == 15  # once, not from both
    assert service._tail.count == 0


def test_live_index_merges_by_score_and_counts_both(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    generation = VectorIndex(8, "m")
    generation.add(np.arange(1, 5), vectors[:4])
    tail = Tail(8, "m", after=4)
    tail.index.add(np.array([5, 6]), vectors[4:])
    live = LiveIndex(generation, tail)
    assert live.count == 6
    found = live.search(vectors[5:6], 6)[0]
    assert found[0][0] == 6 and [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    assert sorted(i for i, _ in found) == [1, 2, 3, 4, 5, 6]
    assert [i for i, _ in live.search(vectors[5:6], 6, np.array([2, 5]))[0]] in ([5, 2], [2, 5])



def test_range_search_covers_the_generation_and_the_tail() -> None:
    """Duplicate groups on a server pair images of the generation with images committed since."""
    d = 8
    vectors = np.eye(d, dtype=np.float32)[:3]
    generation = VectorIndex(d, "m")
    generation.add(np.array([1, 2]), vectors[:2])
    tail = Tail(d, "m", after=2)
    twin = vectors[0] + np.float32(0.01) * vectors[2]
    tail.index.add(np.array([3]), (twin / np.linalg.norm(twin))[None])
    live = LiveIndex(generation, tail)
    (hits,) = live.range_search(vectors[:1], 0.99)
    assert [i for i, _ in hits] == [1, 3] and hits[0][1] >= hits[1][1] >= 0.99
    assert live.range_search(vectors[1:2], 0.99) == [[(2, pytest.approx(1.0))]]
    assert LiveIndex(generation, None).range_search(vectors[:1], 0.99) == generation.range_search(vectors[:1], 0.99)
