"""A query whose bytes are already indexed is answered from the catalog, with no decode and no model run."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import (
    BLUE,
    CATALOG_MODEL,
    RED,
    assert_problem,
    catalog_of,
    colour_image,
    counted_model,
    jpeg,
    new_image,
    ref,
    search,
    sha256_of,
)
from model_fixtures import RED_CLASS
from sqlalchemy import update

from indexer.prepare import FilePreparer, PrepareConfig
from indexer.scan import FoundFile
from indexer.settings import Settings
from search_api import create_app, metrics
from search_api.current import service_of
from storage.catalog import Catalog
from storage.schema import ImageRow
from storage.stored_queries import stored_queries


def catalog_answers() -> float:
    return metrics.QUERY_EMBEDDINGS.labels("catalog")._value.get()


def assert_same_answer(stored: dict[str, Any], computed: dict[str, Any]) -> None:
    """Same hits in the same order, scores and probabilities equal within float tolerance."""
    assert [r["id"] for r in stored["results"]] == [r["id"] for r in computed["results"]]
    np.testing.assert_allclose([r["score"] for r in stored["results"]], [r["score"] for r in computed["results"]],
                               atol=2e-5)
    assert [lab["class_id"] for lab in stored["query"]["labels"]] == [
        lab["class_id"] for lab in computed["query"]["labels"]]
    np.testing.assert_allclose([lab["probability"] for lab in stored["query"]["labels"]],
                               [lab["probability"] for lab in computed["query"]["labels"]], atol=2e-5)


def test_query_of_indexed_bytes_runs_no_model_and_answers_as_the_model_does(
        client: FlaskClient, app: Flask, colour_library: Path) -> None:
    calls = counted_model(service_of(app))
    data = (colour_library / "red" / "red2.jpg").read_bytes()
    before = catalog_answers()
    stored = search(client, data, "?k=8")
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert calls == [] and catalog_answers() == before + 1

    # The same pixels under another hash (bytes after the JPEG's end are ignored by decoders): the model path.
    computed = search(client, data + b"\0", "?k=8")
    assert computed.status_code == 200 and calls == [1]
    assert_same_answer(stored.get_json(), computed.get_json())
    best = stored.get_json()["results"][0]
    assert best["path"].endswith("red2.jpg") and best["score"] == pytest.approx(1.0, abs=1e-5)
    assert stored.get_json()["query"]["labels"][0]["class_id"] == RED_CLASS


def test_raw_body_uploads_are_answered_from_the_catalog_too(client: FlaskClient, app: Flask,
                                                             colour_library: Path) -> None:
    calls = counted_model(service_of(app))
    data = (colour_library / "blue" / "deep" / "blue1.png").read_bytes()
    response = client.post("/api/v1/search?k=3", data=data, content_type="image/png")
    assert response.status_code == 200 and calls == []
    assert response.get_json()["results"][0]["path"].endswith("blue1.png")


def test_batch_runs_the_model_only_for_images_not_in_the_library(client: FlaskClient, app: Flask,
                                                                 colour_library: Path) -> None:
    calls = counted_model(service_of(app))
    known = (colour_library / "green" / "green1.bmp").read_bytes()
    parts = [(known, "known.bmp"), (jpeg(colour_image(BLUE, seed=77)), "new.jpg"), (b"not an image", "bad.jpg"),
             (known + b"\0", "same-pixels.bmp")]
    response = client.post("/api/v1/search/batch?k=5", content_type="multipart/form-data",
                           data={"images": [(io.BytesIO(d), name) for d, name in parts]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert calls == [2]  # the new image and the one whose bytes differ, in one model call
    items = response.get_json()["results"]
    assert ["error" in item for item in items] == [False, False, True, False]
    assert_same_answer(items[0], items[3])
    assert items[0]["results"][0]["path"].endswith("green1.bmp")


def test_indexed_image_over_the_upload_pixel_limit_is_refused_as_any_upload(indexed: Settings,
                                                                           colour_library: Path) -> None:
    api = indexed.api.model_copy(update={"max_upload_pixels": 1000})  # the library's images are 96x80
    app = create_app(indexed.model_copy(update={"api": api}))
    data = (colour_library / "red" / "red0.jpg").read_bytes()
    assert_problem(search(app.test_client(), data), 422, "too_many_pixels", "api.max_upload_pixels")


def test_damaged_stored_vector_is_not_used(client: FlaskClient, app: Flask, indexed: Settings,
                                           colour_library: Path) -> None:
    calls = counted_model(service_of(app))
    path = colour_library / "red" / "red3.jpg"
    catalog = catalog_of(indexed)
    try:
        with catalog.session() as s, s.begin():
            row = s.query(ImageRow).filter(ImageRow.content_hash == sha256_of(path)).one()
            s.execute(update(ImageRow).where(ImageRow.id == row.id)
                      .values(embedding=np.full(len(row.embedding) // 4, np.nan, "<f4").tobytes()))
    finally:
        catalog.close()
    response = search(client, path.read_bytes(), "?k=3")
    assert response.status_code == 200 and calls == [1]


def test_stored_queries_of_the_model_in_use_only(catalog: Catalog) -> None:
    image = new_image(1, classes=((5, 0.7), (9, 0.2), (3, 0.1)))
    other = replace(new_image(2), model_id="another-model@64")
    catalog.apply([image, other], [ref("/lib/a.jpg", 1), ref("/lib/b.jpg", 2)])
    found = stored_queries(catalog, [image.content_hash, other.content_hash, "f" * 64], CATALOG_MODEL)
    assert list(found) == [image.content_hash]
    query = found[image.content_hash]
    np.testing.assert_array_equal(query.vector, image.embedding)
    assert query.predictions == [(5, pytest.approx(0.7)), (9, pytest.approx(0.2)), (3, pytest.approx(0.1))]
    assert (query.width, query.height) == (10, 20)


def test_a_query_is_decoded_to_the_pixels_the_indexer_embedded(app: Flask, client: FlaskClient, indexed: Settings,
                                                                tmp_path: Path) -> None:
    """A large JPEG is drafted to cover the thumbnail when indexed: a query of it must get the same pixels."""
    photo = tmp_path / "big.jpg"
    colour_image(RED, size=(1500, 1100), seed=5).save(photo, quality=90)
    found = FoundFile(str(photo), str(tmp_path), photo.stat().st_size, photo.stat().st_mtime_ns)
    prepared = FilePreparer(PrepareConfig.from_settings(indexed))(found, decode_known=True)
    assert prepared.decoded is not None and indexed.indexer.thumbnail_size > indexed.model.image_size
    service = service_of(app)
    seen: list[np.ndarray] = []
    real_embed = service.embedder.embed
    service.embedder.embed = lambda pixels: seen.append(pixels) or real_embed(pixels)  # type: ignore[method-assign]
    assert search(client, photo.read_bytes()).status_code == 200
    np.testing.assert_array_equal(seen[0][0], prepared.decoded.pixels)
