"""Tiny, deterministic image classifiers written in the formats TF Hub serves.

The product's model is the TF1 Hub-format module
``google/efficientnet/b4/classification/1``. Tests cannot download it, so these
helpers build look-alikes with the same signatures, in milliseconds:

* ``build_tf1_hub_module``: a TF1 Hub-format module (``tfhub_module.pb`` plus a
  TF1 SavedModel whose single graph holds the network once; its MetaGraph has
  the empty tag set, optionally plus a ``{"train"}`` copy like the real B4).
* ``build_tf2_saved_model``: a TF2 SavedModel with the same three signatures.

Model (both formats), input ``images``: float32 ``[N, H, W, 3]``, RGB in [0, 1]:

* raw features ``r`` (16 per image): mean R, G, B of the whole image; mean R, G,
  B of the quadrants top-left, top-right, bottom-left, bottom-right (split at
  ``H // 2`` and ``W // 2``); the standard deviation of the luminance
  ``0.299 R + 0.587 G + 0.114 B`` over the whole image.
* ``features = r @ V`` with ``V`` a [16, 16] variable holding the identity.
* ``logits = mean_rgb @ W + b``: ``W`` [3, num_classes] is 10 at
  ``(0, RED_CLASS)``, ``(1, GREEN_CLASS)``, ``(2, BLUE_CLASS)`` (class ids
  shifted by one in a 1001-class model, whose class 0 is "background"), else 0;
  ``b`` is zero.

Signatures ``image_feature_vector`` -> ``{"default": features}``,
``image_classification`` and ``default`` -> ``{"default": logits}``.

The weights live only in the ``variables/`` checkpoint (the graphs initialise
them to zeros), so a loader that does not restore them gives zero outputs.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf

from indexer.hub_protos import ATTACHMENT_COLLECTION, MODULE_DEF_FILENAME, image_module_info_attachment, module_def_v3

RED_CLASS: int = 1  # "goldfish" (ImageNet 1000-class ids, 0 = tench)
GREEN_CLASS: int = 31  # "tree frog"
BLUE_CLASS: int = 107  # "jellyfish"
FEATURE_DIM: int = 16

INPUT_KEY = "images"
OUTPUT_KEY = "default"
SCOPE = "lookalike_fixture"
DEFAULT_IMAGE_SIZE = (380, 380)  # EfficientNet-B4's expected input size
_LUMA = (0.299, 0.587, 0.114)
_LOGIT_SCALE = 10.0


def _class_offset(num_classes: int) -> int:
    """1 for a 1001-class model (background class first), else 0."""
    return 1 if num_classes == 1001 else 0


def _weights(num_classes: int) -> dict[str, np.ndarray]:
    """The true values of the variables V, W and b."""
    if num_classes <= BLUE_CLASS:
        raise ValueError(
            f"num_classes must be at least {BLUE_CLASS + 1}, got {num_classes}"
        )
    off = _class_offset(num_classes)
    w = np.zeros((3, num_classes), np.float32)
    for channel, cls in enumerate((RED_CLASS, GREEN_CLASS, BLUE_CLASS)):
        w[channel, cls + off] = _LOGIT_SCALE
    return {
        "V": np.eye(FEATURE_DIM, dtype=np.float32),
        "W": w,
        "b": np.zeros((num_classes,), np.float32),
    }


def _prepare_out_dir(out_dir: pathlib.Path) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir


def _forward(
    images: tf.Tensor, v: tf.Tensor, w: tf.Tensor, b: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The network in TF ops (works in a TF1 graph and in a tf.function)."""
    shape = tf.shape(images)
    h2, w2 = shape[1] // 2, shape[2] // 2
    mean_rgb = tf.reduce_mean(images, axis=[1, 2])
    quadrants = [
        tf.reduce_mean(q, axis=[1, 2])
        for q in (
            images[:, :h2, :w2],
            images[:, :h2, w2:],
            images[:, h2:, :w2],
            images[:, h2:, w2:],
        )
    ]
    luma = tf.reduce_sum(images * tf.constant(_LUMA, tf.float32), axis=3)
    luma_std = tf.math.reduce_std(luma, axis=[1, 2])[:, None]
    raw = tf.concat([mean_rgb, *quadrants, luma_std], axis=1)
    features = tf.matmul(raw, v)
    logits = tf.matmul(mean_rgb, w) + b
    return features, logits


def expected_features(images: np.ndarray) -> np.ndarray:
    """Numpy reference of the feature vector: float32 [N, 16]."""
    x = np.asarray(images, np.float64)
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    parts = [x, x[:, :h2, :w2], x[:, :h2, w2:], x[:, h2:, :w2], x[:, h2:, w2:]]
    means = [p.mean(axis=(1, 2)) for p in parts]
    luma_std = (x @ np.asarray(_LUMA)).std(axis=(1, 2))[:, None]
    return np.concatenate([*means, luma_std], axis=1).astype(np.float32)


def expected_logits(images: np.ndarray, num_classes: int = 1000) -> np.ndarray:
    """Numpy reference of the logits: float32 [N, num_classes]."""
    weights = _weights(num_classes)
    mean_rgb = np.asarray(images, np.float64).mean(axis=(1, 2))
    return (mean_rgb @ weights["W"] + weights["b"]).astype(np.float32)


def build_tf1_hub_module(
    out_dir: pathlib.Path, *, num_classes: int = 1000, train_graph: bool = False
) -> pathlib.Path:
    """Write a TF1 Hub-format module (one graph, three signatures) to out_dir.

    The MetaGraph has the empty tag set; with ``train_graph`` a copy tagged
    ``{"train"}`` is added, so plain ``tf.saved_model.load(out_dir)`` fails
    while ``hub.load(out_dir)`` works, as with the real EfficientNet-B4 module.
    """
    out_dir = _prepare_out_dir(out_dir)
    weights = _weights(num_classes)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, None, None, 3], name=INPUT_KEY)
        with v1.variable_scope(SCOPE, use_resource=True):
            variables = {
                name: v1.get_variable(
                    name,
                    shape=value.shape,
                    dtype=tf.float32,
                    initializer=v1.zeros_initializer(),
                )
                for name, value in weights.items()
            }
            features, logits = _forward(
                images, variables["V"], variables["W"], variables["b"]
            )
            features = tf.identity(features, name="feature_vector")
            logits = tf.identity(logits, name="logits")
        v1.add_to_collection(
            ATTACHMENT_COLLECTION, image_module_info_attachment(*DEFAULT_IMAGE_SIZE)
        )
        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        inputs = {INPUT_KEY: info(images)}
        signatures = {
            name: build(inputs, {OUTPUT_KEY: info(tensor)})
            for name, tensor in (
                ("default", logits),
                ("image_classification", logits),
                ("image_feature_vector", features),
            )
        }
        builder = v1.saved_model.Builder(str(out_dir))
        with v1.Session(graph=graph) as sess:
            # The graph initialises to zeros; the true values go to variables/.
            sess.run(
                [var.initializer for var in variables.values()],
                feed_dict={
                    variables[name].initial_value: value
                    for name, value in weights.items()
                },
            )
            builder.add_meta_graph_and_variables(
                sess, tags=[], signature_def_map=signatures, strip_default_attrs=True
            )
            if train_graph:
                builder.add_meta_graph(
                    ["train"], signature_def_map=signatures, strip_default_attrs=True
                )
        builder.save()
    (out_dir / MODULE_DEF_FILENAME).write_bytes(module_def_v3())
    return out_dir


_IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_KEY)


def build_tf2_saved_model(
    out_dir: pathlib.Path, *, num_classes: int = 1000
) -> pathlib.Path:
    """Write the fixture network as a TF2 SavedModel (no tfhub_module.pb).

    Besides the signatures, the loaded object has ``variables`` and
    ``trainable_variables`` and the tf.functions ``image_feature_vector`` and
    ``image_classification``, as TF Hub's reusable SavedModels do.
    """
    out_dir = _prepare_out_dir(out_dir)
    weights = _weights(num_classes)
    v, w, b = (tf.Variable(weights[name], name=name) for name in ("V", "W", "b"))

    @tf.function(input_signature=[_IMAGE_SPEC])
    def image_feature_vector(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_KEY: _forward(images, v, w, b)[0]}

    @tf.function(input_signature=[_IMAGE_SPEC])
    def image_classification(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_KEY: _forward(images, v, w, b)[1]}

    root = tf.train.Checkpoint()
    root.variables = [v, w, b]
    root.trainable_variables = [v, w, b]
    root.image_feature_vector = image_feature_vector
    root.image_classification = image_classification
    classify = image_classification.get_concrete_function()
    tf.saved_model.save(
        root,
        str(out_dir),
        signatures={
            "image_feature_vector": image_feature_vector.get_concrete_function(),
            "image_classification": classify,
            "default": classify,
        },
    )
    return out_dir
