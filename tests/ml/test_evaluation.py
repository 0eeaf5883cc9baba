"""Tests for the evaluation metrics, the bootstrap and the evaluate command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from covidxray.cli import main
from covidxray.imaging.prepare import PREPROCESSING_VERSION
from covidxray.ml.evaluation import bootstrap_ci, classification_metrics, evaluate_logits
from covidxray.predictors.calibration import softmax

# truth: covid covid pneumonia pneumonia normal normal
# predicted: covid pneumonia pneumonia pneumonia normal covid
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.3, 0.6, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.5, 0.4],
        [0.1, 0.2, 0.7],
        [0.5, 0.2, 0.3],
    ]
)
LABELS = np.array([0, 0, 1, 1, 2, 2])


@pytest.fixture(scope="module")
def tmp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model with its ONNX twin and metadata JSON."""
    from covidxray.ml.model import build_model
    from covidxray.ml.training import save_model

    out = tmp_path_factory.mktemp("model") / "tiny.keras"
    meta = {
        "name": "tiny",
        "version": "0.0.1",
        "labels": ["covid", "pneumonia", "normal"],
        "input_size": 64,
        "preprocessing_version": PREPROCESSING_VERSION,
        "temperature": 1.5,
    }
    save_model(build_model(64, (8, 16), dropout=0.0), out, meta)
    return out


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/test/<label>/ with two generated images per class and DIR/manifest.csv."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    rows = ["file,split,label,patient_id"]
    for label, source in (("covid", "mhh"), ("pneumonia", "nih"), ("normal", "nih")):
        (root / "test" / label).mkdir(parents=True)
        for k in range(2):
            name = f"test/{label}/{source}_{label}{k}_0.jpg"
            Image.fromarray(rng.integers(0, 256, (80, 96), dtype=np.uint8)).save(root / name)
            rows.append(f"{name},test,{label},{source}-{label}{k // 2}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_metrics_match_the_hand_computed_case() -> None:
    m = classification_metrics(PROBS, LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == {
        "labels": ["covid", "pneumonia", "normal"],
        "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]],
    }
    assert m["per_class"]["covid"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert m["per_class"]["pneumonia"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert m["per_class"]["normal"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # covid scores: positives 0.8, 0.3; negatives 0.2, 0.1, 0.1, 0.5 -> 0.8 beats 4, 0.3 beats 3 -> 7/8
    assert m["roc_auc"]["covid"] == pytest.approx(7 / 8)
    for i, label in enumerate(("covid", "pneumonia", "normal")):
        assert m["roc_auc"][label] == pytest.approx(roc_auc_score(i == LABELS, PROBS[:, i]))
    assert m["roc_auc_macro"] == pytest.approx(np.mean(list(m["roc_auc"].values())))


def test_auc_counts_ties_as_half() -> None:
    probs = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.2, 0.4, 0.4]])
    assert classification_metrics(probs, np.array([0, 1, 2]))["roc_auc"]["covid"] == pytest.approx(0.75)


def test_bootstrap_resamples_whole_patients() -> None:
    labels = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 2, 2])  # patient a right twice, patient b wrong twice
    ci = bootstrap_ci(pred, labels, ["a", "a", "b", "b"], n_boot=500)
    assert ci["accuracy"][0] == 0.0 and ci["accuracy"][1] == 1.0
    perfect = bootstrap_ci(labels, labels, ["a", "a", "b", "b"], n_boot=50)
    assert perfect == {"accuracy": [1.0, 1.0], "covid_recall": [1.0, 1.0]}


def test_evaluate_logits_reports_sources_and_the_shortcut_check() -> None:
    logits = np.log(PROBS)
    result = evaluate_logits(
        logits,
        LABELS,
        1.0,
        patients=["ieee8023-1", "mhh-2", "nih-3", "nih-4", "actualmed-5", "actualmed-5"],
        sources=["ieee8023", "mhh", "nih", "nih", "actualmed", "actualmed"],
        shortcut_sources=["actualmed", "ieee8023", "mhh"],
        n_boot=100,
    )
    assert result["per_source"]["nih"] == {"n": 2, "accuracy": 1.0}
    assert result["per_source"]["actualmed"] == {"n": 2, "accuracy": 0.5}
    assert result["shortcut_check"]["n"] == 2
    assert result["shortcut_check"]["accuracy"] == 0.5
    assert result["shortcut_check"]["called_covid"] == 0.5
    assert result["ece"] == pytest.approx(result["ece_uncalibrated"])
    assert result["ci95_unit"] == "patient"


def test_evaluate_command_prints_the_contract_keys(tmp_model: Path, tiny_folder: Path) -> None:
    out = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data",
            str(tiny_folder / "test"),
            "--model",
            str(tmp_model),
            "--json",
            "--report",
            str(tiny_folder / "report"),
        ],
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    keys = {
        "n",
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "roc_auc",
        "roc_auc_macro",
        "ece",
        "ece_uncalibrated",
        "ci95",
        "per_source",
    }
    assert keys <= result.keys()
    assert result["n"] == 6 and result["ci95_unit"] == "patient"
    assert set(result["per_source"]) == {"nih", "mhh"}
    assert {p.name for p in (tiny_folder / "report").iterdir()} == {
        "confusion_matrix.png",
        "roc.png",
        "reliability.png",
    }
    table = CliRunner().invoke(
        main, ["evaluate", "--data", str(tiny_folder / "test"), "--model", str(tmp_model)]
    )
    assert table.exit_code == 0 and "confusion matrix" in table.output


def test_predict_command_writes_json_and_csv(
    tmp_model: Path, tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COVIDXRAY_OOD", "off")  # the small model has no gate
    out = CliRunner().invoke(
        main, ["predict", str(tiny_folder / "test"), "--model", str(tmp_model), "--json"]
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == 6
    for row in rows:
        probs = np.array(list(row["probabilities"].values()))
        assert probs.sum() == pytest.approx(1.0, abs=1e-3)
        assert row["predicted_class"] in ("covid", "pneumonia", "normal", "uncertain")
    out = CliRunner().invoke(
        main,
        ["predict", str(tiny_folder / "test"), "--model", str(tmp_model), "--csv", str(tmp_path / "p.csv")],
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "p.csv").read_text().splitlines()[
        0
    ] == "file,predicted_class,score,covid,pneumonia,normal,error"
    assert softmax(np.zeros(3)).sum() == pytest.approx(1.0)
