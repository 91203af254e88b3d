from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import TEST_IMAGE_SIZE
from model_fixtures import RED_CLASS

from indexer.model import Embedder
from indexer.settings import SettingsError, load_settings
from indexer.tf_runtime import (
    CPU_BATCH_SIZE,
    configure_tensorflow,
    effective_batch_size,
    gpus,
    load_tensorflow,
    resolve_precision,
)


@pytest.fixture(autouse=True)
def restore_float32():  # type: ignore[no-untyped-def]
    yield
    configure_tensorflow("float32")


def test_precision_policies_set_the_graph_rewriter() -> None:
    configure_tensorflow("mixed_bfloat16")
    options = tf.config.optimizer.get_experimental_options()
    assert options["auto_mixed_precision_onednn_bfloat16"] is True and options["auto_mixed_precision"] is False
    configure_tensorflow("float32")
    options = tf.config.optimizer.get_experimental_options()
    assert not options.get("auto_mixed_precision_onednn_bfloat16") and not options.get("auto_mixed_precision")
    with pytest.raises(ValueError, match="model.precision"):
        configure_tensorflow("float8")


@pytest.mark.skipif(bool(gpus()), reason="checks the CPU-only warning")
def test_mixed_float16_without_gpu_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        configure_tensorflow("mixed_float16")
    assert "needs a GPU" in caplog.text


def test_batch_size_auto_and_explicit() -> None:
    assert effective_batch_size(5) == 5
    assert effective_batch_size(0) == (64 if gpus() else CPU_BATCH_SIZE)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_outputs_stay_float32_and_right_under_any_precision(tf1_module: Path, precision: str) -> None:
    embedder = Embedder(str(tf1_module), TEST_IMAGE_SIZE, precision=precision)
    assert embedder.warmup_seconds > 0
    embedder.warm_up(4)
    red = np.zeros((2, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3), np.uint8)
    red[..., 0] = 255
    out = embedder.embed(red)
    assert out.features.dtype == np.float32 and out.probabilities.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, rtol=1e-3)
    assert list(out.probabilities.argmax(axis=1)) == [RED_CLASS, RED_CLASS]


def test_precision_setting_is_validated() -> None:
    with pytest.raises(SettingsError, match="model.precision"):
        load_settings(config_file=None, environ={"LOOKALIKE_MODEL__PRECISION": "half"})
    assert load_settings(config_file=None, environ={}).model.precision == "auto"


def test_auto_precision_is_float32_on_a_cpu_and_mixed_float16_on_a_gpu() -> None:
    assert resolve_precision("auto") == ("mixed_float16" if gpus() else "float32")
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert configure_tensorflow("auto") == resolve_precision("auto")
    with pytest.raises(ValueError, match="model.precision"):
        resolve_precision("half")


def test_oneDNN_keeps_converted_weights_because_the_graphs_are_frozen() -> None:
    # Read by oneDNN's kernels: set before TensorFlow is imported, unless the user chose otherwise.
    load_tensorflow()
    assert os.environ.get("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS") == "1"
