"""EfficientNet-Lite0 in TensorFlow ops, from a PyTorch state dict, written as a TF1 Hub module.

The weights come from the ``efficientnet_lite_pytorch`` layout (``_conv_stem``, ``_blocks.N``,
``_conv_head``, ``_fc``). BatchNorm is folded into the convolutions (inference only), and the
network runs with TF 'SAME' padding, ReLU6 and no squeeze-excite, as Lite0 was trained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from indexer.hub_module_writer import check_out_dir, write_tf1_hub_module

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000

_SCOPE = "efficientnet_lite0"
_BN_EPS = 1e-3  # efficientnet_lite_pytorch: batch_norm_epsilon=1e-3
# Depthwise stride of each MBConv block: stages (repeats, stride) (1,1) (2,2) (2,2) (3,2) (3,1) (4,2) (1,1).
_BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)


class NotLite0Error(ValueError):
    """The state dict does not hold EfficientNet-Lite0's weights."""


def _conv_bn(state: dict[str, np.ndarray], conv: str, bn: str, depthwise: bool = False) -> list[np.ndarray]:
    """PyTorch conv + inference BatchNorm -> TF kernel (HWIO, or HWC1 for depthwise) and bias."""
    w = state[conv + ".weight"].astype(np.float64)  # [out, in/groups, kh, kw]
    scale = state[bn + ".weight"] / np.sqrt(state[bn + ".running_var"].astype(np.float64) + _BN_EPS)
    bias = state[bn + ".bias"] - state[bn + ".running_mean"] * scale
    kernel = (w * scale[:, None, None, None]).transpose((2, 3, 0, 1) if depthwise else (2, 3, 1, 0))
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def lite0_weights(state: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Folded weights in network order, named like the reference conversion (stem, blocks_i/..., head).

    Raises NotLite0Error when the state dict is not EfficientNet-Lite0's.
    """
    try:
        out = list(zip(("stem/kernel", "stem/bias"), _conv_bn(state, "_conv_stem", "_bn0"), strict=True))
        for i in range(len(_BLOCK_STRIDES)):
            p = f"_blocks.{i}."
            parts = [("expand", "_expand_conv", "_bn0", False)] if p + "_expand_conv.weight" in state else []
            parts += [("depthwise", "_depthwise_conv", "_bn1", True), ("project", "_project_conv", "_bn2", False)]
            for name, conv, bn, dw in parts:
                kernel, bias = _conv_bn(state, p + conv, p + bn, dw)
                out += [(f"blocks_{i}/{name}/kernel", kernel), (f"blocks_{i}/{name}/bias", bias)]
        out += list(zip(("head/kernel", "head/bias"), _conv_bn(state, "_conv_head", "_bn1"), strict=True))
        out += [("classifier/kernel", state["_fc.weight"].T.astype(np.float32)),
                ("classifier/bias", state["_fc.bias"].astype(np.float32))]
    except KeyError as exc:
        raise NotLite0Error(f"the state dict is not EfficientNet-Lite0: missing {exc}") from None
    if f"_blocks.{len(_BLOCK_STRIDES)}._project_conv.weight" in state:
        raise NotLite0Error("the state dict has more blocks than EfficientNet-Lite0")
    if (shape := out[-2][1].shape) != (FEATURE_DIM, NUM_CLASSES):
        raise NotLite0Error(f"classifier shape {shape} is not Lite0's {(FEATURE_DIM, NUM_CLASSES)}")
    return out


def lite0_forward(tf: Any, images: Any, w: dict[str, Any]) -> tuple[Any, Any]:
    """EfficientNet-Lite0 in TF ops: ReLU6, no squeeze-excite, TF 'SAME' padding, folded BN."""
    x = (images * 255.0 - 127.0) / 128.0
    x = tf.nn.relu6(tf.nn.conv2d(x, w["stem/kernel"], 2, "SAME") + w["stem/bias"])
    for i, stride in enumerate(_BLOCK_STRIDES):
        p, inputs = f"blocks_{i}/", x
        if p + "expand/kernel" in w:
            x = tf.nn.relu6(tf.nn.conv2d(x, w[p + "expand/kernel"], 1, "SAME") + w[p + "expand/bias"])
        x = tf.nn.depthwise_conv2d(x, w[p + "depthwise/kernel"], [1, stride, stride, 1], "SAME")
        x = tf.nn.relu6(x + w[p + "depthwise/bias"])
        x = tf.nn.conv2d(x, w[p + "project/kernel"], 1, "SAME") + w[p + "project/bias"]
        if stride == 1 and inputs.shape[-1] == x.shape[-1]:
            x = x + inputs
    x = tf.nn.relu6(tf.nn.conv2d(x, w["head/kernel"], 1, "SAME") + w["head/bias"])
    features = tf.reduce_mean(x, axis=[1, 2])
    logits = tf.matmul(features, w["classifier/kernel"]) + w["classifier/bias"]
    return features, logits


def build_lite0_module(state: dict[str, np.ndarray], out_dir: Path) -> Path:
    """Write EfficientNet-Lite0 as a TF1 Hub format module into out_dir (new or empty).

    Why this format: it is the product's default model's format, so the loading code (one
    pruned function for features + logits from a single forward pass) is exercised as is.
    """
    from indexer.tf_runtime import load_tensorflow

    tf = load_tensorflow()
    out_dir = check_out_dir(out_dir)
    weights = lite0_weights(state)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        with v1.variable_scope(_SCOPE, use_resource=True):
            # Zero initializers keep the weights out of the graph; the values go to variables/ only.
            variables = [(v1.get_variable(name, shape=value.shape, dtype=tf.float32,
                                          initializer=v1.zeros_initializer()), value) for name, value in weights]
            read = {name: var.read_value() for (name, _), (var, _) in zip(weights, variables, strict=True)}
            features, logits = lite0_forward(tf, images, read)
            features = tf.identity(features, name="feature_vector")
            logits = tf.identity(logits, name="logits")
        with v1.Session(graph=graph) as sess:
            sess.run([v.initializer for v, _ in variables], feed_dict={v.initial_value: x for v, x in variables})
            write_tf1_hub_module(out_dir, sess, images, features, logits, (IMAGE_SIZE, IMAGE_SIZE),
                                 [v for v, _ in variables])
    log.info("wrote EfficientNet-Lite0 TF1 Hub module to %s", out_dir)
    return out_dir
