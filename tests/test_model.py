from __future__ import annotations

import hashlib
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import TEST_IMAGE_SIZE
from model_fixtures import BLUE_CLASS, FEATURE_DIM, GREEN_CLASS, RED_CLASS, expected_features

from indexer.model import Embedder, ModelUnavailableError, model_id, top_k

S = TEST_IMAGE_SIZE


def solid(*colours: tuple[int, int, int]) -> np.ndarray:
    return np.stack([np.full((S, S, 3), c, np.uint8) for c in colours])


@pytest.fixture(scope="module")
def tf1_embedder(tf1_module: Path) -> Embedder:
    return Embedder(str(tf1_module), S)


@pytest.mark.parametrize("module_fixture", ["tf1_module", "tf2_module"])
def test_both_formats_give_unit_features_and_exact_labels(module_fixture: str, request: pytest.FixtureRequest) -> None:
    embedder = Embedder(str(request.getfixturevalue(module_fixture)), S)
    assert embedder.feature_dim == FEATURE_DIM
    assert embedder.route == ("pruned single pass" if module_fixture == "tf1_module" else "frozen single pass")
    pixels = solid((255, 0, 0), (0, 255, 0), (0, 0, 255))
    out = embedder.embed(pixels)
    assert out.features.shape == (3, FEATURE_DIM) and out.probabilities.shape == (3, 1000)
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, rtol=1e-5)
    raw = expected_features(pixels.astype(np.float32) / 255)
    np.testing.assert_allclose(out.features, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    best = top_k(out.probabilities, 5)
    assert [row[0][0] for row in best] == [RED_CLASS, GREEN_CLASS, BLUE_CLASS]
    assert all(row[0][1] > 0.9 for row in best)
    assert all(len(row) == 5 and row[0][1] >= row[1][1] >= row[4][1] for row in best)


def test_background_class_of_1001_models_is_dropped(tf1_module_1001: Path) -> None:
    out = Embedder(str(tf1_module_1001), S).embed(solid((255, 0, 0)))
    assert out.probabilities.shape == (1, 1000)
    assert int(out.probabilities[0].argmax()) == RED_CLASS


def test_embed_checks_input_shape(tf1_embedder: Embedder) -> None:
    with pytest.raises(ValueError, match=r"expected \[N, 64, 64, 3\]"):
        tf1_embedder.embed(np.zeros((1, 32, 32, 3), np.uint8))


def test_model_id_tracks_module_content_and_size(tf1_module: Path, tf2_module: Path) -> None:
    assert model_id(str(tf1_module), 380) != model_id(str(tf1_module), 224)
    assert model_id(str(tf1_module), 380) != model_id(str(tf2_module), 380)
    assert model_id("https://tfhub.dev/google/efficientnet/b4/classification/1", 380) == (
        "https://tfhub.dev/google/efficientnet/b4/classification/1@380"
    )


def test_local_tar_gz_handle_is_unpacked_into_the_cache(
    tf1_module: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "module.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tf1_module, arcname=".")
    embedder = Embedder(str(archive), S)
    assert embedder.path.parent == tmp_path / "cache"
    assert int(embedder.embed(solid((0, 0, 255))).probabilities.argmax()) == BLUE_CLASS


def test_url_handle_loads_from_tfhub_cache_without_network(
    tf1_module: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = "https://tfhub.dev/google/efficientnet/b4/classification/1"
    cache = tmp_path / "cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    cached = cache / hashlib.sha1(handle.encode()).hexdigest()
    cached.parent.mkdir()
    cached.symlink_to(tf1_module, target_is_directory=True)
    embedder = Embedder(handle, S)
    assert embedder.model_id == f"{handle}@{S}"
    assert int(embedder.embed(solid((0, 255, 0))).probabilities.argmax()) == GREEN_CLASS


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback server that accepts connections and never answers (a network that drops packets)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/b4.tar.gz"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_unreachable_hub_fails_fast_and_says_how_to_work_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ModelUnavailableError) as err:
        Embedder(f"http://127.0.0.1:{port}/b4.tar.gz", S, download_timeout=2)
    message = str(err.value)
    assert "cannot download model" in message and "model.handle" in message
    assert "TFHUB_CACHE_DIR" in message and ".tar.gz" in message


def test_hanging_hub_download_is_bounded_by_the_timeout(
    silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="timed out"):
        Embedder(silent_server, S, download_timeout=1)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nowhere", "no such module directory"),
        (lambda p: p, "directory has no saved_model.pb"),
    ],
)
def test_bad_local_handles_are_named(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelUnavailableError, match=message):
        Embedder(str(make(tmp_path)), S)


def test_module_without_image_signatures_is_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x: tf.Tensor) -> tf.Tensor:
            return 2 * x

    module = Plain()
    tf.saved_model.save(module, str(tmp_path / "plain"), signatures={"serving_default": module.double})
    with pytest.raises(ModelUnavailableError, match="lacks signature"):
        Embedder(str(tmp_path / "plain"), S)
