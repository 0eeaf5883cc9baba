"""Tests for the train command (one epoch on a generated folder) and its helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidxray.cli import main
from covidxray.training import data_fingerprint, list_images, sample_weights

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


def test_train_runs_end_to_end_for_one_epoch(tmp_path: Path) -> None:
    data = _make_folder(tmp_path / "data")
    out = tmp_path / "out" / "m.keras"
    args = ["--data", str(data), "--out", str(out), "--epochs", "1", "--seed", "3", "--members", "2"]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".onnx").is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["labels"] == list(LABELS)
    assert meta["name"] == "m" and meta["temperature"] > 0
    assert meta["training"]["config"]["seed"] == 3 and meta["training"]["config"]["members"] == 2
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
