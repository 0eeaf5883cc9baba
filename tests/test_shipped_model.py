"""Tests for the shipped model: files, metadata, size, and the stated label of every sample image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidxray.calibration import softmax
from covidxray.imaging import PREPROCESSING_VERSION, prepare
from covidxray.labels import LABELS
from covidxray.runtime import DEFAULT_MODEL, load_runtime

SAMPLES = sorted((Path(__file__).parent / "samples").glob("*.jpg"))


def test_shipped_files_exist_and_fit_the_budget() -> None:
    for suffix in (".keras", ".onnx", ".json"):
        assert DEFAULT_MODEL.with_suffix(suffix).is_file()
    assert DEFAULT_MODEL.stat().st_size <= 20 * 1024 * 1024
    assert (DEFAULT_MODEL.parent / "MODEL_CARD.md").is_file()


def test_metadata_matches_the_code() -> None:
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert tuple(meta["labels"]) == LABELS
    assert meta["preprocessing_version"] == PREPROCESSING_VERSION
    assert meta["input_size"] <= 320 and meta["temperature"] > 0
    assert max(meta["onnx_max_abs_diff"].values()) <= 1e-4


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
    onnx_rt, keras_rt = load_runtime(DEFAULT_MODEL), load_runtime(DEFAULT_MODEL, "keras")
    batch = np.stack([prepare(p.read_bytes(), onnx_rt.info.input_size).tensor for p in SAMPLES])
    (lo, fo), (lk, fk) = onnx_rt.run(batch), keras_rt.run(batch)
    np.testing.assert_allclose(lo, lk, atol=1e-4)
    np.testing.assert_allclose(fo, fk, atol=1e-4)
