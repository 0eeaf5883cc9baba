"""Tests for the shipped model: files, metadata, size, and the stated label of every sample image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidxray.imaging.prepare import PREPROCESSING_VERSION, prepare
from covidxray.labels import LABELS
from covidxray.predictors.calibration import softmax
from covidxray.predictors.runtime import DEFAULT_MODEL, load_runtime

SAMPLES = sorted((Path(__file__).parents[1] / "samples").glob("*.jpg"))
# The float twin matches Keras to 1e-4 of each output's largest magnitude (feature maps reach 6: ReLU6).
TWIN_BOUND = 6e-4


def within_twin_bound(ours: np.ndarray, keras: np.ndarray) -> None:
    np.testing.assert_allclose(ours, keras, rtol=0, atol=1e-4 * max(1.0, float(np.abs(keras).max())))


def test_shipped_files_exist_and_fit_the_budget() -> None:
    for suffix in (".keras", ".onnx", ".int8.onnx", ".ood.npz", ".json"):
        assert DEFAULT_MODEL.with_suffix(suffix).is_file()
    assert DEFAULT_MODEL.stat().st_size <= 20 * 1024 * 1024
    assert sum(p.stat().st_size for p in DEFAULT_MODEL.parent.iterdir()) <= 50 * 1024 * 1024
    assert (DEFAULT_MODEL.parent / "MODEL_CARD.md").is_file()


def test_the_metadata_lists_both_twins_with_their_measured_agreement() -> None:
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert meta["serve"] in meta["twins"]
    assert max(meta["twins"]["onnx-float"]["max_abs_diff_vs_keras"].values()) <= TWIN_BOUND
    int8 = meta["twins"]["onnx-int8"]["val"]
    assert int8["n"] == meta["val"]["n"] and 0 <= int8["top1_agreement"] <= 1


def test_the_heatmap_stays_exact_and_matches_keras() -> None:
    from covidxray.imaging.heatmap import class_activation_map

    onnx_rt, keras_rt = load_runtime(DEFAULT_MODEL, "onnx-float"), load_runtime(DEFAULT_MODEL, "keras")
    batch = np.stack([prepare(SAMPLES[0].read_bytes(), onnx_rt.info.input_size).tensor])
    (logits, features), (_, keras_features) = onnx_rt.run(batch), keras_rt.run(batch)
    kernel, bias = onnx_rt.output_weights
    for c in range(len(LABELS)):
        ours = class_activation_map(features[0], kernel, c)
        theirs = class_activation_map(keras_features[0], keras_rt.output_weights[0], c)
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
        assert ours.mean() + bias[c] == pytest.approx(float(logits[0, c]), abs=1e-3)  # exact: GAP into Dense


def test_metadata_matches_the_code() -> None:
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert tuple(meta["labels"]) == LABELS
    assert meta["preprocessing_version"] == PREPROCESSING_VERSION
    assert meta["input_size"] <= 320 and meta["temperature"] > 0
    assert max(meta["onnx_max_abs_diff"].values()) <= TWIN_BOUND


def test_there_are_samples_of_every_class() -> None:
    assert 6 <= len(SAMPLES) <= 9
    assert {p.name.split("-")[0] for p in SAMPLES} == set(LABELS)


@pytest.mark.parametrize("runtime_name", [None, "keras"])
def test_shipped_model_predicts_the_stated_label_of_each_sample(runtime_name: str | None) -> None:
    runtime = load_runtime(DEFAULT_MODEL, runtime_name)
    size = runtime.info.input_size
    batch = np.stack([prepare(p.read_bytes(), size).tensor for p in SAMPLES])
    logits, features = runtime.run(batch)
    probs = softmax(logits, runtime.info.temperature)
    predicted = [LABELS[i] for i in probs.argmax(axis=1)]
    assert predicted == [p.name.split("-")[0] for p in SAMPLES]
    assert features.shape[0] == len(SAMPLES) and features.ndim == 4


def test_onnx_twin_agrees_with_keras_on_the_samples() -> None:
    onnx_rt, keras_rt = load_runtime(DEFAULT_MODEL, "onnx-float"), load_runtime(DEFAULT_MODEL, "keras")
    batch = np.stack([prepare(p.read_bytes(), onnx_rt.info.input_size).tensor for p in SAMPLES])
    (lo, fo), (lk, fk) = onnx_rt.run(batch), keras_rt.run(batch)
    within_twin_bound(lo, lk)
    within_twin_bound(fo, fk)


def test_the_int8_twin_serves_exactly_when_it_reaches_its_bound() -> None:
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    int8 = meta["twins"]["onnx-int8"]
    assert int8["min_top1_agreement"] >= 0.99
    reaches = int8["val"]["top1_agreement"] >= int8["min_top1_agreement"]
    assert meta["serve"] == ("onnx-int8" if reaches else "onnx-float")
    assert meta["ood"]["fitted_on"] == meta["serve"]  # the gate judges the features of the twin that serves


def test_the_int8_twin_picks_the_float_twins_class_on_the_samples() -> None:
    float_rt, int8_rt = load_runtime(DEFAULT_MODEL, "onnx-float"), load_runtime(DEFAULT_MODEL, "onnx-int8")
    batch = np.stack([prepare(p.read_bytes(), float_rt.info.input_size).tensor for p in SAMPLES])
    (lf, _), (li, _) = float_rt.run(batch), int8_rt.run(batch)
    pf, pi = softmax(lf, float_rt.info.temperature), softmax(li, int8_rt.info.temperature)
    np.testing.assert_array_equal(pi.argmax(1), pf.argmax(1))
    bound = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["twins"]["onnx-int8"]["val"]
    assert np.abs(pi - pf).max() <= max(0.1, bound["max_probability_difference"])


def test_train_with_its_defaults_reproduces_the_shipped_recipe() -> None:
    from dataclasses import asdict

    from covidxray.cli.model import train
    from covidxray.ml.config import TrainConfig

    shipped = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["training"]["config"]
    backbone = next(o for o in train.params if o.name == "backbone").default
    assert json.loads(json.dumps(asdict(TrainConfig.for_backbone(backbone)))) == shipped
