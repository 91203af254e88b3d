"""Write a TF1 graph as a TF1 Hub format module, the format of google/efficientnet/b4/classification/1.

What is written mirrors tensorflow_hub's own TF1 exporter (which tensorflow_hub 0.16.1 no longer
ships): ``saved_model.pb`` with ONE MetaGraph under the empty tag set, holding the network once;
signatures ``image_feature_vector`` -> {"default": features}, ``image_classification`` and
``default`` -> {"default": logits}, all fed by input ``images`` (float32 [N, H, W, 3], RGB in
[0, 1]); the expected input size as an ``image_module_info`` attachment; no saver_def and no init
op; the weights in ``variables/``; and ``tfhub_module.pb`` (ModuleDef FORMAT_V3).

Why one graph: a consumer can prune ONE function from it that returns the features and the
logits of a single forward pass, which is how the product runs such modules.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indexer.hub_protos import ATTACHMENT_COLLECTION, MODULE_DEF_FILENAME, image_module_info_attachment, module_def_v3

log = logging.getLogger(__name__)

INPUT_KEY = "images"
OUTPUT_KEY = "default"
FEATURE_SIGNATURE = "image_feature_vector"
CLASSIFY_SIGNATURE = "image_classification"


def check_out_dir(out_dir: Path) -> Path:
    """The module's directory, which must be new or empty (checked before any slow work)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    return out_dir


def write_tf1_hub_module(out_dir: Path, session: Any, images: Any, features: Any, logits: Any,
                         image_size: tuple[int, int], variables: Sequence[Any]) -> Path:
    """Write the graph of session (variables already holding their values) as a TF1 Hub module.

    images is the input placeholder, features and logits the output tensors, image_size the
    (height, width) the module declares, variables those saved to ``variables/``.
    """
    from indexer.tf_runtime import load_tensorflow

    tf = load_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.util import deprecation

    out_dir = check_out_dir(out_dir)
    v1 = tf.compat.v1
    graph = session.graph
    # The TF1 APIs are the point here: their deprecation notices would only alarm the log's reader.
    with graph.as_default(), deprecation.silence():
        # Exported before the Saver below adds its ops: the module has no saver_def, like hub's.
        meta_graph = v1.train.export_meta_graph(graph=graph, strip_default_attrs=True)
        info = v1.saved_model.utils.build_tensor_info
        for name, tensor in (("default", logits), (CLASSIFY_SIGNATURE, logits), (FEATURE_SIGNATURE, features)):
            meta_graph.signature_def[name].CopyFrom(v1.saved_model.signature_def_utils.build_signature_def(
                {INPUT_KEY: info(images)}, {OUTPUT_KEY: info(tensor)}))
        meta_graph.collection_def[ATTACHMENT_COLLECTION].bytes_list.value[:] = [
            image_module_info_attachment(*image_size)]
        (out_dir / "variables").mkdir(parents=True)
        v1.train.Saver(var_list=list(variables)).save(
            session, str(out_dir / "variables" / "variables"), write_meta_graph=False, write_state=False)
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    saved_model.meta_graphs.add().CopyFrom(meta_graph)  # tag set empty, like hub's TF1 exporter
    (out_dir / "saved_model.pb").write_bytes(saved_model.SerializeToString(deterministic=True))
    (out_dir / MODULE_DEF_FILENAME).write_bytes(module_def_v3())
    log.info("wrote a TF1 Hub module (%d variables, %dx%d input) to %s", len(variables), *image_size, out_dir)
    return out_dir
