"""indexer.hub_protos: the messages of TF1 Hub modules, and the input size a module declares with them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from model_fixtures import DEFAULT_IMAGE_SIZE

from indexer.hub_protos import (
    ATTACHMENT_COLLECTION,
    ModuleAttachment,
    ModuleDef,
    image_module_info_attachment,
    image_size_from_attachments,
    module_def_v3,
)
from indexer.model import declared_image_size
from indexer.tf_runtime import load_tensorflow


def test_messages_match_the_bytes_tensorflow_hub_wrote() -> None:
    # tensorflow_hub's TF1 exporter wrote these for a 380x380 module (key, then ImageModuleInfo{InputSize}).
    assert image_module_info_attachment(380, 380) == b"\n\x11image_module_info\x12\x08\n\x06\x08\xfc\x02\x10\xfc\x02"
    assert module_def_v3() == b"\x08\x03"
    assert ModuleDef.FromString(b"\x08\x03").format == ModuleDef.FORMAT_V3


def test_the_size_is_found_among_other_attachments() -> None:
    other = ModuleAttachment(key="other", value=b"\x08\x01").SerializeToString()
    assert image_size_from_attachments([other, image_module_info_attachment(600, 380)]) == (600, 380)
    assert image_size_from_attachments([other]) is None
    assert image_size_from_attachments([]) is None


def test_declared_size_of_the_fixture_modules(tf1_module: Path, tf1_module_1001: Path, tf2_module: Path) -> None:
    assert declared_image_size(tf1_module) == DEFAULT_IMAGE_SIZE  # also has a {"train"} graph, like B4
    assert declared_image_size(tf1_module_1001) == DEFAULT_IMAGE_SIZE
    assert declared_image_size(tf2_module) is None


def test_a_damaged_attachment_declares_nothing(tf1_module: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    load_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((tf1_module / "saved_model.pb").read_bytes())
    for graph in saved.meta_graphs:
        graph.collection_def[ATTACHMENT_COLLECTION].bytes_list.value[:] = [b"\x0a\xff\xff\xff"]
    (tmp_path / "saved_model.pb").write_bytes(saved.SerializeToString())
    with caplog.at_level(logging.WARNING, "indexer.model"):
        assert declared_image_size(tmp_path) is None
    assert f"unreadable {ATTACHMENT_COLLECTION} attachment" in caplog.text
