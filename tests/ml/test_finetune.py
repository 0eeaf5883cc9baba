"""Fine-tuning helpers that need no pretrained weights: batch-norm re-estimation (AdaBN)."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from covidxray.ml.finetune import adapt_batch_norm


def _net() -> keras.Model:
    """Conv -> BN -> ReLU -> Conv -> BN, with the ImageNet-like statistics of another domain (0 and 1)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(layers.Conv2D(4, 3, name="c1")(inputs)))
    return keras.Model(inputs, layers.BatchNormalization(name="bn2")(layers.Conv2D(5, 1, name="c2")(x)))


def _channel_stats(model: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seen = np.asarray(model(x, training=False)).reshape(-1, model.output.shape[-1]).astype(np.float64)
    return seen.mean(0), seen.var(0)


def test_each_layer_learns_the_statistics_of_what_it_sees_after_the_layers_before_it() -> None:
    net = _net()
    x = (np.random.default_rng(1).normal(size=(70, 8, 8, 3)) * 3 + 5).astype(np.float32)
    gamma_before = net.get_layer("bn2").gamma.numpy().copy()
    adapt_batch_norm(net, x, batch_size=16)  # batches of unequal size: 16, 16, 16, 16, 6
    for name, before in (("bn1", "c1"), ("bn2", "c2")):
        mean, var = _channel_stats(keras.Model(net.inputs[0], net.get_layer(before).output), x)
        bn = net.get_layer(name)
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-3, atol=1e-4)
    out_mean, out_var = _channel_stats(net, x)
    np.testing.assert_allclose(out_mean, 0.0, atol=1e-2)  # the net now normalises these films
    np.testing.assert_allclose(out_var, 1.0, atol=1e-2)
    np.testing.assert_array_equal(net.get_layer("bn2").gamma.numpy(), gamma_before)  # scales kept
