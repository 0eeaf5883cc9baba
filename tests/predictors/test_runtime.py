"""Tests for the runtimes: the ONNX twin agrees with Keras; metadata; no TensorFlow on the ONNX path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covidxray.imaging.prepare import PREPROCESSING_VERSION
from covidxray.predictors.runtime import DEFAULT_MODEL, KerasRuntime, ModelInfo, OnnxRuntime, load_runtime


def _small_model(seed: int):  # noqa: ANN202 (a keras.Model)
    """An untrained small model (random weights, trained-looking BN statistics and bias)."""
    from covidxray.ml.model import build_model

    model = build_model(96, (8, 16, 24), dropout=0.0)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # non-trivial batch-norm statistics so the comparison means something
        if layer.__class__.__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    gamma * rng.uniform(0.5, 2, gamma.shape),
                    rng.normal(0, 0.5, beta.shape),
                    rng.normal(0, 0.5, mean.shape),
                    rng.uniform(0.2, 2, var.shape),
                ]
            )
    dense = model.get_layer("logits")
    dense.set_weights([rng.normal(0, 0.3, dense.get_weights()[0].shape), rng.normal(0, 1, 3)])
    return model


def _meta(name: str) -> dict:
    return {
        "name": name,
        "version": "2026.11.0",
        "labels": ["covid", "pneumonia", "normal"],
        "input_size": 96,
        "preprocessing_version": PREPROCESSING_VERSION,
        "temperature": 1.25,
        "note": "x",
    }


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained model with its ONNX twin and JSON."""
    from covidxray.ml.training import save_model

    model = _small_model(0)
    out = tmp_path_factory.mktemp("model") / "small.keras"
    save_model(model, out, _meta("small"))
    return out


def test_model_info_loads_known_fields_and_keeps_the_rest(model_path: Path) -> None:
    info = ModelInfo.load(model_path.with_suffix(".json"))
    assert info.labels == ("covid", "pneumonia", "normal")
    assert (info.name, info.version, info.input_size, info.temperature) == ("small", "2026.11.0", 96, 1.25)
    assert info.extra["note"] == "x"


def test_onnx_twin_agrees_with_keras_on_logits_and_features(model_path: Path) -> None:
    onnx_rt, keras_rt = load_runtime(model_path), load_runtime(model_path, "keras")
    assert isinstance(onnx_rt, OnnxRuntime) and isinstance(keras_rt, KerasRuntime)
    assert (onnx_rt.name, keras_rt.name) == ("onnx", "keras")
    batch = np.random.default_rng(1).random((3, 96, 96, 1), dtype=np.float32)
    (lo, fo), (lk, fk) = onnx_rt.run(batch), keras_rt.run(batch)
    assert lo.shape == (3, 3) and fo.shape == fk.shape == (3, 12, 12, 24)
    np.testing.assert_allclose(lo, lk, atol=1e-4)
    np.testing.assert_allclose(fo, fk, atol=1e-4)


def test_output_weights_give_exact_class_activation_maps(model_path: Path) -> None:
    onnx_rt, keras_rt = load_runtime(model_path), load_runtime(model_path, "keras")
    (k1, b1), (k2, b2) = onnx_rt.output_weights, keras_rt.output_weights
    np.testing.assert_allclose(k1, k2, atol=1e-7)
    np.testing.assert_allclose(b1, b2, atol=1e-7)
    batch = np.random.default_rng(2).random((2, 96, 96, 1), dtype=np.float32)
    logits, features = onnx_rt.run(batch)
    cams = features @ k1 + b1  # (n, h, w, 3); their spatial mean is the logits
    np.testing.assert_allclose(cams.mean(axis=(1, 2)), logits, atol=1e-4)


def test_an_ensemble_averages_its_members_and_keeps_exact_maps(tmp_path: Path) -> None:
    from covidxray.ml.model import ensemble
    from covidxray.ml.training import save_model

    members = [_small_model(seed) for seed in (3, 4, 5)]
    batch = np.random.default_rng(6).random((2, 96, 96, 1), dtype=np.float32)
    expected = np.mean([np.asarray(m(batch, training=False)[0]) for m in members], axis=0)
    out = tmp_path / "trio.keras"
    save_model(ensemble(members), out, _meta("trio"))  # exports the twin and checks it against Keras
    for runtime in (load_runtime(out), load_runtime(out, "keras")):
        logits, features = runtime.run(batch)
        assert features.shape == (2, 12, 12, 3 * 24)
        np.testing.assert_allclose(logits, expected, atol=1e-4)
        kernel, bias = runtime.output_weights
        np.testing.assert_allclose((features @ kernel + bias).mean(axis=(1, 2)), logits, atol=1e-4)


def test_an_ensemble_of_one_is_the_member_itself() -> None:
    from covidxray.ml.model import ensemble

    member = _small_model(7)
    assert ensemble([member]) is member


def test_check_twin_fails_beyond_tolerance(model_path: Path) -> None:
    import keras

    from covidxray.ml.model import check_twin

    model = keras.models.load_model(model_path, compile=False)
    batch = np.zeros((1, 96, 96, 1), np.float32)
    with pytest.raises(RuntimeError, match="disagrees"):
        check_twin(model, model_path.with_suffix(".onnx"), batch, tolerance=-1.0)


def test_check_twin_bound_grows_with_the_outputs_and_diffs_are_absolute(model_path: Path) -> None:
    import keras

    from covidxray.ml.model import check_twin

    model = keras.models.load_model(model_path, compile=False)
    batch = np.random.default_rng(0).random((2, 96, 96, 1), dtype=np.float32)
    diffs = check_twin(model, model_path.with_suffix(".onnx"), batch, tolerance=1e-4)
    assert set(diffs) == {"logits", "features"} and all(0.0 <= d <= 1e-3 for d in diffs.values())
    if max(diffs.values()) > 0:  # a bound of 1e-12 of the outputs' size is below float32 rounding
        with pytest.raises(RuntimeError, match="allowed"):
            check_twin(model, model_path.with_suffix(".onnx"), batch, tolerance=1e-12)


def test_unknown_runtime_is_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown runtime"):
        load_runtime(model_path, "tflite")


def test_default_model_is_resolved_from_the_package_not_the_cwd() -> None:
    assert DEFAULT_MODEL.is_absolute()
    assert DEFAULT_MODEL.parent == Path(__file__).resolve().parents[2] / "app-keras" / "model"


def test_onnx_path_never_imports_tensorflow(model_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from covidxray.predictors.runtime import load_runtime\n"
        f"rt = load_runtime({str(model_path)!r})\n"
        "rt.run(np.zeros((1, 96, 96, 1), np.float32)); rt.output_weights\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert json.loads(model_path.with_suffix(".json").read_text())["onnx_max_abs_diff"]["logits"] <= 1e-4


@pytest.fixture(scope="module")
def twins_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small model with both twins: float and int8 (calibrated on random films)."""
    from covidxray.ml.training import add_int8_twin, save_model

    out = tmp_path_factory.mktemp("twins") / "small.keras"
    meta = save_model(_small_model(1), out, _meta("small"))
    films = np.random.default_rng(2).random((24, 96, 96, 1), dtype=np.float32)
    add_int8_twin(out, meta, films[:16], films[16:], np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    return out


def test_the_metadata_names_each_twin_and_the_one_to_serve(twins_path: Path) -> None:
    meta = json.loads(twins_path.with_suffix(".json").read_text())
    int8 = meta["twins"]["onnx-int8"]
    agrees = int8["val"]["top1_agreement"] >= int8["min_top1_agreement"] == 0.99
    assert meta["serve"] == ("onnx-int8" if agrees else "onnx-float")
    assert meta["twins"]["onnx-float"]["file"] == "small.onnx"
    assert meta["twins"]["onnx-int8"]["file"] == "small.int8.onnx"
    assert set(meta["twins"]["onnx-int8"]["val"]) >= {"top1_agreement", "max_probability_difference"}


def test_each_twin_is_loaded_by_its_name(twins_path: Path) -> None:
    served = json.loads(twins_path.with_suffix(".json").read_text())["serve"]
    assert load_runtime(twins_path).name == {"onnx-float": "onnx", "onnx-int8": "onnx-int8"}[served]
    assert load_runtime(twins_path, "onnx-float").path.name == "small.onnx"
    int8 = load_runtime(twins_path, "onnx-int8")
    assert int8.path.name == "small.int8.onnx" and int8.name == "onnx-int8"
    logits, features = int8.run(np.zeros((2, 96, 96, 1), np.float32))
    assert logits.shape == (2, 3) and features.shape[0] == 2


def test_the_runtime_serves_the_twin_the_metadata_names(twins_path: Path, tmp_path: Path) -> None:
    import shutil

    for file in twins_path.parent.iterdir():
        shutil.copy(file, tmp_path / file.name)
    meta = json.loads((tmp_path / "small.json").read_text())
    (tmp_path / "small.json").write_text(json.dumps({**meta, "serve": "onnx-int8"}))
    assert load_runtime(tmp_path / "small.keras").path.name == "small.int8.onnx"


def test_the_int8_twin_keeps_the_output_layer_in_float(twins_path: Path) -> None:
    float_rt, int8_rt = load_runtime(twins_path, "onnx-float"), load_runtime(twins_path, "onnx-int8")
    for ours, theirs in zip(int8_rt.output_weights, float_rt.output_weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_a_twin_the_model_lacks_is_refused_by_name(model_path: Path) -> None:
    with pytest.raises(ValueError, match="no onnx-int8 twin"):
        load_runtime(model_path, "onnx-int8")
