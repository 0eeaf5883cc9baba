"""Tests for the EfficientNet-Lite port: the weights reader, the name-by-name loader, and ImageNet sanity."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidxray.ml.efficientnet_lite import (
    VARIANTS,
    build_backbone,
    imagenet_classifier,
    load_state,
    stage_specs,
)
from covidxray.ml.torch_weights import WeightsError, read_state_dict

LITE0 = VARIANTS["efficientnet-lite0"]
DAISY = 985  # ImageNet class index


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_state_dict(LITE0.weights_path())


@pytest.fixture(scope="module")
def backbone():  # noqa: ANN201
    return build_backbone(LITE0, size=64)


def test_the_lite0_file_holds_every_tensor_with_its_shape(state: dict[str, np.ndarray]) -> None:
    assert len(state) == 296  # 245 backbone tensors, 49 batch-norm counters, the classifier's 2
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert len(stage_specs(LITE0)) == 16


def test_every_tensor_of_the_file_is_loaded(backbone, state: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    loaded = load_state(backbone, {k: v for k, v in state.items() if not k.startswith("_fc.")})
    assert loaded == 245
    kernel = backbone.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(kernel, state["_conv_stem.weight"].transpose(2, 3, 1, 0))


def test_a_missing_tensor_is_named(backbone, state: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    damaged = {k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(WeightsError, match=r"missing \['_blocks.3._bn1.running_var'\]"):
        load_state(backbone, damaged)


def test_an_extra_tensor_is_named(backbone, state: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    with pytest.raises(WeightsError, match=r"unexpected \['_blocks.99._bn1.weight'\]"):
        load_state(backbone, {**state, "_blocks.99._bn1.weight": np.zeros(3, np.float32)})


def test_a_wrong_shaped_tensor_is_named_and_nothing_is_loaded(backbone, state: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    before = backbone.get_layer("head_conv").get_weights()[0].copy()
    damaged = {**state, "_conv_head.weight": np.zeros((1280, 320, 3, 3), np.float32)}
    damaged["_conv_stem.weight"] = state["_conv_stem.weight"] + 1.0
    with pytest.raises(WeightsError, match=r"_conv_head has shape"):
        load_state(backbone, damaged)
    np.testing.assert_array_equal(backbone.get_layer("head_conv").get_weights()[0], before)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    data = LITE0.weights_path().read_bytes()
    for cut in (100, 40_000, len(data) - 1000):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="damaged or truncated|truncated"):
            read_state_dict(path)


def test_a_corrupted_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)
    with pytest.raises(WeightsError):
        read_state_dict(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError):
        read_state_dict(path)


def test_a_file_that_asks_for_any_other_class_is_refused_without_running_it(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("this must never run",))

    path = tmp_path / "hostile.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(Payload(), protocol=2))
    with pytest.raises(WeightsError, match=r"refusing to load (__builtin__|builtins)\.print"):
        read_state_dict(path)


def test_the_port_calls_a_daisy_a_daisy() -> None:
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("flower.jpg")  # 427 × 640 RGB
    side = photo.shape[0]
    left = (photo.shape[1] - side) // 2
    image = Image.fromarray(photo[:, left : left + side]).resize((224, 224), Image.Resampling.BICUBIC)
    rgb = (np.asarray(image, np.float32)[None] - 127.0) / 128.0
    logits = np.asarray(imagenet_classifier("efficientnet-lite0")(rgb))[0]
    ranked = np.argsort(-logits)
    assert ranked[0] == DAISY
    assert logits[DAISY] - logits[ranked[1]] > 0.5  # measured: 0.69
