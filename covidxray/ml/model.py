"""The networks: an ImageNet-pretrained EfficientNet-Lite or a small residual CNN trained from scratch.

Both end in global average pooling straight into the logits, so class activation maps are exact.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

FEATURES = "features"
LOGITS = "logits"


def _conv_bn(x: keras.KerasTensor, filters: int, stride: int = 1, act: bool = True) -> keras.KerasTensor:
    """3×3 convolution, batch normalisation and (optionally) ReLU."""
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if act else x


def _stage(x: keras.KerasTensor, filters: int, blocks: int) -> keras.KerasTensor:
    """Halve the resolution with a strided convolution, then `blocks` residual blocks."""
    x = _conv_bn(x, filters, stride=2)
    for _ in range(blocks):
        y = _conv_bn(x, filters)
        y = _conv_bn(y, filters, act=False)
        x = layers.ReLU()(layers.Add()([x, y]))
    return x


def build_model(
    size: int = 224,
    widths: tuple[int, ...] = (16, 32, 64, 128, 192),
    n_classes: int = 3,
    dropout: float = 0.3,
    blocks: int = 1,
) -> keras.Model:
    """Return a Keras model mapping (size, size, 1) images to [logits, last feature maps].

    The head is global average pooling straight into one Dense layer, so class activation
    maps computed from the feature maps and the Dense kernel are exact.
    """
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = _conv_bn(x, widths[0], stride=2)
    for width in widths[1:]:
        x = _stage(x, width, blocks)
    features = layers.Identity(name=FEATURES)(x)
    pooled = layers.GlobalAveragePooling2D()(features)
    pooled = layers.Dropout(dropout)(pooled)
    logits = layers.Dense(n_classes, name=LOGITS)(pooled)
    return keras.Model(inputs, [logits, features], name="covidxray_cnn")


def build_pretrained(
    backbone: str = "efficientnet-lite0",
    size: int = 224,
    n_classes: int = 3,
    dropout: float = 0.2,
    weights: bool = True,
    drop_connect: float = 0.2,
    bn_momentum: float = 0.0,
) -> keras.Model:
    """Return EfficientNet-Lite with its ImageNet weights, mapping (size, size, 1) to [logits, features].

    The grey film is repeated to three channels and scaled to the weights' convention inside the model,
    so every runtime sees the ONE preprocessed tensor. With `bn_momentum` 0, batch normalisation keeps
    its ImageNet statistics (inference mode, not trainable); otherwise it trains, normalising with each
    batch's statistics and re-estimating the moving ones with that momentum.
    """
    from covidxray.ml.efficientnet_lite import VARIANTS, build_backbone, load_weights, to_rgb

    net = build_backbone(backbone, size, drop_connect)
    if weights:
        load_weights(net, VARIANTS[backbone].weights_path())
    for layer in net.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = bn_momentum > 0
            layer.momentum = bn_momentum or layer.momentum
    inputs = keras.Input((size, size, 1), name="image")
    features = layers.Identity(name=FEATURES)(net(to_rgb(inputs)))
    pooled = layers.GlobalAveragePooling2D()(features)
    pooled = layers.Dropout(dropout)(pooled)
    logits = layers.Dense(n_classes, name=LOGITS)(pooled)
    return keras.Model(inputs, [logits, features], name=f"covidxray_{net.name}")


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The nested pretrained backbone of `model` (None for the scratch network)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if nested else None


def ensemble(members: list[keras.Model]) -> keras.Model:
    """Join trained members into one model whose logits are the mean of theirs.

    The members' last feature maps are concatenated and their Dense kernels stacked (divided by the
    member count), so the result still has a pooling head straight into one Dense layer and its
    class activation maps stay exact: the mean of the members' maps.
    """
    if len(members) == 1:
        return members[0]
    first = members[0]
    inputs = keras.Input(first.inputs[0].shape[1:], name="image")
    maps = [
        keras.Model(member.inputs, member.get_layer(FEATURES).output, name=f"member_{i}")(inputs)
        for i, member in enumerate(members)
    ]
    features = layers.Concatenate(name=FEATURES)(maps)
    pooled = layers.GlobalAveragePooling2D()(features)
    head = layers.Dense(output_layer(first).units, name=LOGITS)
    logits = head(pooled)
    kernels, biases = zip(*(output_layer(member).get_weights() for member in members), strict=True)
    head.set_weights([np.concatenate(kernels) / len(members), np.mean(biases, axis=0)])
    return keras.Model(inputs, [logits, features], name=first.name)


def logits_model(model: keras.Model) -> keras.Model:
    """Return a view of `model` with the logits as its only output (shares the weights; for training)."""
    return keras.Model(model.inputs, model.outputs[0])


def output_layer(model: keras.Model) -> layers.Dense:
    """Return the Dense layer that maps pooled features to logits."""
    return model.get_layer(LOGITS)


def export_onnx(model: keras.Model, path: Path, opset: int = 17) -> None:
    """Write the ONNX twin of `model` (input `image`; outputs `logits` and `features`) via tf2onnx."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from covidxray.ml.onnx_graph import fold_input_scaling

    size = model.inputs[0].shape[1]
    spec = (tf.TensorSpec((None, size, size, 1), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def forward(image: tf.Tensor) -> dict[str, tf.Tensor]:
        logits, features = model(image, training=False)
        return {LOGITS: tf.identity(logits, name=LOGITS), FEATURES: tf.identity(features, name=FEATURES)}

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=opset)
    fold_input_scaling(proto)  # exact: the input's rescaling goes into the first convolution
    onnx.save(proto, str(path))


def check_twin(model: keras.Model, onnx_path: Path, batch: np.ndarray, tolerance: float) -> dict[str, float]:
    """Compare the ONNX twin with `model` on `batch`; return each output's largest absolute difference.

    Raise RuntimeError where one exceeds `tolerance` times the output's largest magnitude (at least 1):
    float32 rounding grows with the values, so feature maps that reach 6 may differ by a few 1e-4.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    twin = session.run([LOGITS, FEATURES], {"image": batch.astype(np.float32)})
    ours = [np.asarray(t) for t in model(batch, training=False)]
    diffs, bounds = {}, {}
    for name, a, b in zip((LOGITS, FEATURES), twin, ours, strict=True):
        diffs[name] = float(np.abs(a - b).max())
        bounds[name] = tolerance * max(1.0, float(np.abs(b).max()))
    if any(diffs[name] > bounds[name] for name in diffs):
        raise RuntimeError(f"the ONNX twin disagrees with the Keras model: {diffs} (allowed {bounds})")
    return diffs
