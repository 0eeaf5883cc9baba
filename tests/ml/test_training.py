"""Tests for the train command (one epoch on a generated folder) and its helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidxray.cli import main
from covidxray.ml.datasets import augmenter, list_images, mixup
from covidxray.ml.training import data_fingerprint, sample_weights

LABELS = ("covid", "pneumonia", "normal")


def _make_folder(root: Path) -> Path:
    """Write DIR/{train,val}/<label>/ with tiny images of mixed formats, sizes and modes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c, label in enumerate(LABELS):
            (root / split / label).mkdir(parents=True)
            for k in range(n):
                pixels = rng.integers(0, 256, (64 + 8 * k, 72), dtype=np.uint8)
                pixels[:, : 10 * (c + 1)] = 255  # a class-dependent stripe
                img = Image.fromarray(pixels)
                if k % 2:
                    img.convert("RGB").save(root / split / label / f"nih_{label}{k}_x.png")
                else:
                    img.save(root / split / label / f"kermany_{label}{k}_x.jpg")
    return root


def test_train_fine_tunes_efficientnet_lite0_for_one_epoch_and_writes_both_twins(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    out = tmp_path / "out" / "m.keras"
    args = ["--data", str(data), "--out", str(out), "--backbone", "efficientnet-lite0", "--size", "64"]
    result = CliRunner().invoke(main, ["train", *args, "--epochs", "1", "--adapt-bn"])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    config = meta["training"]["config"]
    assert config["backbone"] == "efficientnet-lite0" and config["size"] == meta["input_size"] == 64
    assert config["adapt_bn"] is True
    assert meta["training"]["members"][0]["epochs_run"] == 1
    assert meta["serve"] == "onnx-float"
    float_twin, int8_twin = meta["twins"]["onnx-float"], meta["twins"]["onnx-int8"]
    assert (out.parent / float_twin["file"]).is_file() and (out.parent / int8_twin["file"]).is_file()
    assert max(float_twin["max_abs_diff_vs_keras"].values()) <= 6e-4  # 1e-4 of features up to 6 (ReLU6)
    assert int8_twin["val"]["n"] == 6 and 0.0 <= int8_twin["val"]["top1_agreement"] <= 1.0
    assert {"accuracy_float", "accuracy_int8", "ece_float", "ece_int8"} <= int8_twin["val"].keys()


def test_train_refuses_an_unknown_backbone(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    args = ["--data", str(data), "--out", str(tmp_path / "m.keras"), "--backbone", "resnet50"]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2 and "--backbone" in result.output


def test_train_runs_the_scratch_network_end_to_end_for_one_epoch(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    out = tmp_path / "out" / "m.keras"
    args = ["--data", str(data), "--out", str(out), "--backbone", "scratch", "--epochs", "1", "--seed", "3"]
    args += ["--members", "2"]
    args += ["--mixup", "0.2", "--hflip"]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".onnx").is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["labels"] == list(LABELS)
    assert meta["name"] == "m" and meta["temperature"] > 0
    config = meta["training"]["config"]
    assert config["backbone"] == "scratch" and config["seed"] == 3 and config["members"] == 2
    assert config["mixup"] == 0.2 and config["hflip"] is True
    assert [(m["seed"], m["epochs_run"]) for m in meta["training"]["members"]] == [(3, 1), (4, 1)]
    assert max(meta["onnx_max_abs_diff"].values()) <= 1e-4
    assert {"ece", "ece_uncalibrated"} <= meta["val"].keys()
    assert meta["data_fingerprint"] == data_fingerprint(data)
    next((data / "val" / "covid").glob("*")).write_bytes(b"changed")
    assert data_fingerprint(data) != meta["data_fingerprint"]


def test_train_refuses_an_output_not_ending_in_keras(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "m.h5")])
    assert result.exit_code != 0 and ".keras" in result.output


def test_train_refuses_zero_members(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    result = CliRunner().invoke(
        main, ["train", "--data", str(data), "--out", str(tmp_path / "m.keras"), "--members", "0"]
    )
    assert result.exit_code == 2 and "--members" in result.output


def test_train_refuses_a_negative_mixup(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    result = CliRunner().invoke(
        main, ["train", "--data", str(data), "--out", str(tmp_path / "m.keras"), "--mixup", "-0.1"]
    )
    assert result.exit_code == 2 and "--mixup" in result.output


def test_list_images_orders_labels_and_skips_other_files(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    (data / "val" / "covid" / "notes.txt").write_text("x")
    files, labels = list_images(data / "val")
    assert len(files) == 6 and labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_sample_weights_balance_classes_and_sources() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    sources = ["ieee8023", "ieee8023", "ieee8023", "mhh", "nih", "nih"]
    w = sample_weights(labels, sources, balance=0.0)
    assert w.mean() == pytest.approx(1.0)
    assert w[:4].sum() == pytest.approx(w[4:].sum())  # classes weigh the same in total
    w = sample_weights(labels, sources, balance=1.0)
    assert w[3] == pytest.approx(w[:3].sum())  # each source of a class weighs the same in total


def test_mixup_blends_images_targets_and_weights_by_one_share_and_pairing() -> None:
    import tensorflow as tf

    values = np.arange(1, 9, dtype=np.float32)  # image i is the constant values[i], and so is its weight
    images = tf.constant(np.broadcast_to(values[:, None, None, None], (8, 4, 4, 1)))
    targets = tf.constant(np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0, 1]])
    blend = mixup(0.4, seed=7)
    shares = set()
    for _ in range(5):
        x, y, w = (t.numpy() for t in blend(images, targets, tf.constant(values)))
        assert np.allclose(x[:, 0, 0, 0], w) and np.allclose(x.min(axis=(1, 2, 3)), x.max(axis=(1, 2, 3)))
        assert np.allclose(y.sum(axis=1), 1.0) and (y >= 0).all()
        assert values.min() <= w.min() and w.max() <= values.max()
        assert w.sum() == pytest.approx(values.sum(), rel=1e-5)  # a pairing, not a resampling
        shares.add(round(float(y.max(axis=1).min()), 4))
    assert len(shares) > 1  # a new share each batch


def test_augmenter_flips_left_right_only_when_asked() -> None:
    plain = [type(layer).__name__ for layer in augmenter(1).layers]
    flipped = augmenter(1, hflip=True).layers
    assert "RandomFlip" not in plain
    assert type(flipped[-1]).__name__ == "RandomFlip" and flipped[-1].mode == "horizontal"


def test_the_trained_upper_blocks_merged_back_compute_what_the_split_computed() -> None:
    from covidxray.ml.config import TrainConfig
    from covidxray.ml.finetune import merge_top, split_pretrained

    cfg = TrainConfig.for_backbone("efficientnet-lite0", size=64)
    model, bottom, top = split_pretrained(cfg)
    rng = np.random.default_rng(0)
    top.set_weights([w * rng.uniform(0.9, 1.1, w.shape).astype(w.dtype) for w in top.get_weights()])
    films = rng.uniform(0, 1, (2, 64, 64, 1)).astype(np.float32)
    split = np.asarray(top(bottom(films)))
    assert np.abs(split - np.asarray(model(films)[0])).max() > 1e-3  # the weights moved
    merge_top(model, top)
    np.testing.assert_allclose(np.asarray(model(films)[0]), split, atol=1e-4)


def test_train_refuses_a_block_the_backbone_does_not_have(tmp_path: Path) -> None:
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "m.keras"), "--backbone", "efficientnet-lite0"]
    result = CliRunner().invoke(main, ["train", *args, "--tune-from", "99"])
    assert result.exit_code == 2 and "cannot start training at 99" in result.output


def test_train_refuses_to_adapt_batch_norm_of_the_scratch_network(tmp_path: Path) -> None:
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "m.keras"), "--backbone", "scratch"]
    result = CliRunner().invoke(main, ["train", *args, "--adapt-bn"])
    assert result.exit_code == 2 and "adapting batch norm needs a pretrained backbone" in result.output


def _saved_member(path: Path, widths: tuple[int, ...]) -> Path:
    """An untrained scratch network at 32 px, saved with the metadata that `join` reads."""
    from covidxray.imaging.prepare import PREPROCESSING_VERSION
    from covidxray.ml.model import build_model

    path.parent.mkdir(parents=True, exist_ok=True)
    build_model(32, widths, 3, blocks=1).save(path)
    meta = {"name": path.stem, "version": "2026.12.03", "labels": list(LABELS), "input_size": 32,
            "preprocessing_version": PREPROCESSING_VERSION, "val": {"accuracy": 0.5},
            "training": {"config": {"widths": list(widths)}, "seconds": 1.0}}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_join_averages_the_members_logits_and_writes_twins_and_gate(tmp_path: Path) -> None:
    import keras

    data = _make_folder(tmp_path / "data")
    members = [_saved_member(tmp_path / "a.keras", (8, 16)), _saved_member(tmp_path / "b.keras", (4, 12))]
    out = tmp_path / "out" / "joined.keras"
    result = CliRunner().invoke(main, ["join", "--data", str(data), "--out", str(out), *map(str, members)])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [m["file"] for m in meta["training"]["joined"]] == ["a.keras", "b.keras"]
    assert meta["input_size"] == 32 and meta["ood"]["fitted_on"] == meta["serve"]
    assert (out.parent / meta["twins"]["onnx-int8"]["file"]).is_file()
    films = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    each = [np.asarray(keras.models.load_model(m)(films)[0]) for m in members]
    joined = keras.models.load_model(out)(films)
    np.testing.assert_allclose(np.asarray(joined[0]), np.mean(each, axis=0), atol=1e-5)
    assert joined[1].shape[-1] == 16 + 12  # the members' feature maps side by side: exact heatmaps


def test_join_refuses_models_of_different_input_sizes(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    a, b = _saved_member(tmp_path / "a.keras", (8,)), _saved_member(tmp_path / "b.keras", (8,))
    meta = json.loads(b.with_suffix(".json").read_text())
    b.with_suffix(".json").write_text(json.dumps({**meta, "input_size": 64}))
    result = CliRunner().invoke(
        main, ["join", "--data", str(data), "--out", str(tmp_path / "j.keras"), str(a), str(b)]
    )
    assert result.exit_code == 1 and "one input size" in result.output


def test_join_refuses_models_whose_feature_maps_differ_in_size(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    a, b = _saved_member(tmp_path / "a.keras", (8, 16)), _saved_member(tmp_path / "b.keras", (4, 8, 12))
    args = ["join", "--data", str(data), "--out", str(tmp_path / "j.keras"), str(a), str(b)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "feature maps differ in size" in result.output
