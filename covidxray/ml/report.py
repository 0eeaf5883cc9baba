"""The evaluation report's figures: confusion matrix, ROC curves and reliability diagram (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covidxray.labels import LABELS
from covidxray.ml.evaluation import fmt
from covidxray.predictors import calibration


def write_report(folder: Path, result: dict, logits: np.ndarray, labels: np.ndarray) -> list[Path]:
    """Write confusion-matrix, ROC and reliability-diagram PNGs into `folder`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    probs = calibration.softmax(logits, result["temperature"])
    paths = [folder / "confusion_matrix.png", folder / "roc.png", folder / "reliability.png"]

    fig, ax = plt.subplots(figsize=(4.5, 4))
    matrix = np.asarray(result["confusion_matrix"]["matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    ax.set(
        xticks=range(len(LABELS)),
        yticks=range(len(LABELS)),
        xticklabels=LABELS,
        yticklabels=LABELS,
        xlabel="predicted",
        ylabel="truth",
        title=f"accuracy {result['accuracy']:.3f}",
    )
    _save(fig, paths[0])

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for i, label in enumerate(LABELS):
        fpr, tpr = _roc_curve(probs[:, i], labels == i)
        ax.plot(fpr, tpr, label=f"{label} (AUC {fmt(result['roc_auc'][label])})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest")
    ax.legend(loc="lower right")
    _save(fig, paths[1])

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, p in (("uncalibrated", calibration.softmax(logits)), ("calibrated", probs)):
        conf, acc = _reliability(p, labels)
        ax.plot(conf, acc, "o-", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="confidence", ylabel="accuracy", title=f"reliability (ECE {result['ece']:.3f})")
    ax.legend(loc="upper left")
    _save(fig, paths[2])
    return paths


def _save(fig: Any, path: Path) -> None:
    """Write a figure as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (false positive rates, true positive rates) over descending thresholds."""
    order = np.argsort(-scores, kind="mergesort")
    hits = positive[order]
    tpr = np.concatenate([[0.0], np.cumsum(hits) / max(hits.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(~hits) / max((~hits).sum(), 1)])
    return fpr, tpr


def _reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Return mean confidence and accuracy of the non-empty confidence bins."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.clip(np.digitize(conf, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    used = [b for b in range(bins) if (index == b).any()]
    return np.array([conf[index == b].mean() for b in used]), np.array(
        [correct[index == b].mean() for b in used]
    )
