"""Evaluation: metrics, patient-level bootstrap intervals, per-source accuracy (figures: `report`)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidxray.labels import LABELS
from covidxray.predictors import calibration

log = logging.getLogger(__name__)
MANIFEST = "manifest.csv"
COVID = LABELS.index("covid")


def find_manifest(data_dir: Path) -> Path | None:
    """Return manifest.csv in `data_dir` or its parent, if any."""
    for folder in (data_dir, data_dir.parent):
        if (folder / MANIFEST).is_file():
            return folder / MANIFEST
    return None


def read_manifest(path: Path) -> dict[Path, dict[str, str]]:
    """Map each resolved file path in the manifest to its row."""
    with path.open(newline="") as handle:
        return {(path.parent / row["file"]).resolve(): row for row in csv.DictReader(handle)}


def covid_bearing_sources(rows: dict[Path, dict[str, str]]) -> list[str]:
    """Return the sources that hold covid images anywhere in the manifest."""
    found = {_source(r["patient_id"]) for r in rows.values() if r.get("label") == "covid"}
    return sorted(found)


def _source(patient_id: str) -> str:
    """Return the source key: the patient id's prefix before the first '-'."""
    return patient_id.split("-", 1)[0]


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1/support, confusion matrix and one-vs-rest AUC."""
    n_classes = len(LABELS)
    pred = probs.argmax(axis=1)
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, pred), 1)
    per_class = {}
    for i, label in enumerate(LABELS):
        tp, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
    roc_auc = {label: _auc(probs[:, i], labels == i) for i, label in enumerate(LABELS)}
    aucs = [a for a in roc_auc.values() if a is not None]
    return {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(LABELS), "matrix": matrix.tolist()},
        "roc_auc": roc_auc,
        "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
    }


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_ci(
    pred: np.ndarray, labels: np.ndarray, groups: Sequence[str], n_boot: int = 2000, seed: int = 0
) -> dict[str, list[float | None]]:
    """95 % percentile intervals of accuracy and covid recall, resampling whole groups (patients)."""
    rng = np.random.default_rng(seed)
    keys, index = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(index == k) for k in range(len(keys))]
    correct = (pred == labels).astype(np.float64)
    is_covid = labels == COVID
    acc, rec = [], []
    for _ in range(n_boot):
        take = np.concatenate([members[k] for k in rng.integers(0, len(keys), len(keys))])
        acc.append(correct[take].mean())
        covid = take[is_covid[take]]
        rec.append(correct[covid].mean() if len(covid) else np.nan)
    ci: dict[str, list[float | None]] = {
        "accuracy": [float(np.percentile(acc, 2.5)), float(np.percentile(acc, 97.5))],
        "covid_recall": [None, None],
    }
    if not np.all(np.isnan(rec)):
        ci["covid_recall"] = [float(np.nanpercentile(rec, 2.5)), float(np.nanpercentile(rec, 97.5))]
    return ci


def evaluate_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    patients: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    shortcut_sources: Sequence[str] = (),
    n_boot: int = 2000,
) -> dict:
    """Return the full `evaluate --json` object for logits, true labels and optional patient ids."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = calibration.softmax(logits, temperature)
    result = classification_metrics(probs, labels)
    result["temperature"] = float(temperature)
    result["ece"] = calibration.expected_calibration_error(probs, labels)
    result["ece_uncalibrated"] = calibration.expected_calibration_error(calibration.softmax(logits), labels)
    pred = probs.argmax(axis=1)
    groups = list(patients) if patients is not None else [str(i) for i in range(len(labels))]
    result["ci95"] = bootstrap_ci(pred, labels, groups, n_boot)
    result["ci95_unit"] = "patient" if patients is not None else "image"
    sources = list(sources) if sources is not None else ["unknown"] * len(labels)
    per_source = {}
    for source in sorted(set(sources)):
        mask = np.asarray([s == source for s in sources])
        per_source[source] = {"n": int(mask.sum()), "accuracy": float((pred[mask] == labels[mask]).mean())}
    result["per_source"] = per_source
    mask = np.asarray([s in shortcut_sources for s in sources]) & (labels != COVID)
    result["shortcut_check"] = {
        "what": "non-covid images from covid-bearing sources",
        "sources": list(shortcut_sources),
        "n": int(mask.sum()),
        "accuracy": float((pred[mask] == labels[mask]).mean()) if mask.any() else None,
        "called_covid": float((pred[mask] == COVID).mean()) if mask.any() else None,
    }
    return result


def format_table(result: dict) -> str:
    """Render an evaluation result as a readable plain-text table."""
    lo, hi = result["ci95"]["accuracy"]
    lines = [
        f"n={result['n']}  accuracy={result['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f})  "
        f"macro F1={result['macro_f1']:.3f}  macro AUC={fmt(result['roc_auc_macro'])}",
        f"ECE={result['ece']:.3f} (uncalibrated {result['ece_uncalibrated']:.3f}, "
        f"temperature {result['temperature']:.3f})",
        "",
        f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'auc':>10}{'support':>9}",
    ]
    for label, c in result["per_class"].items():
        lines.append(
            f"{label:<10}{c['precision']:>10.3f}{c['recall']:>10.3f}{c['f1']:>10.3f}"
            f"{fmt(result['roc_auc'][label]):>10}{c['support']:>9}"
        )
    lines += ["", "confusion matrix (rows = truth): " + " ".join(LABELS)]
    lines += [
        f"{label:<10}" + "".join(f"{v:>10}" for v in row)
        for label, row in zip(LABELS, result["confusion_matrix"]["matrix"], strict=True)
    ]
    lines += ["", f"{'source':<12}{'n':>6}{'accuracy':>10}"]
    lines += [f"{s:<12}{v['n']:>6}{v['accuracy']:>10.3f}" for s, v in result["per_source"].items()]
    check = result["shortcut_check"]
    if check["n"]:
        lines += [
            "",
            f"shortcut check ({', '.join(check['sources'])}, non-covid): n={check['n']} "
            f"accuracy={check['accuracy']:.3f} called covid={check['called_covid']:.3f}",
        ]
    return "\n".join(lines)


def fmt(value: float | None) -> str:
    """Format an optional number."""
    return "-" if value is None else f"{value:.3f}"
