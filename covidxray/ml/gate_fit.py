"""Fitting and measuring the gate for non-frontal inputs (training side: scikit-learn, matplotlib).

The served side, `covidxray.predictors.gate`, only loads a fitted gate and judges with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.predictors.gate import KIND_WORDS, Gate, pooled_of_files


def fit(
    train: np.ndarray,
    labels: np.ndarray,
    val: np.ndarray,
    max_false_refusals: float = 0.005,
    kinds: dict[str, np.ndarray] | None = None,
) -> Gate:
    """Fit the gate on training films' pooled features (n, d) and their labels; set the threshold so that
    at most `max_false_refusals` of the val films' scores lie above it. `kinds` maps a known kind of
    non-frontal input to examples of its pooled features (used only to name what an input looks like)."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    gate = Gate(means.astype(np.float32), precision.astype(np.float32), threshold=np.inf)
    gate.threshold = float(np.quantile(gate.scores(val), 1.0 - max_false_refusals))
    if kinds:
        gate.kind_names = tuple(kinds)
        gate.kind_means = np.stack([np.asarray(v).mean(axis=0) for v in kinds.values()]).astype(np.float32)
    return gate


def kind_folders(ood_dir: Path | None) -> dict[str, list[Path]]:
    """The image files of each kind of non-frontal input under `ood_dir/<kind>/`, by folder name."""
    from covidxray.ml.datasets import IMAGE_SUFFIXES

    if ood_dir is None:
        return {}
    found = {
        folder.name: sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for folder in sorted(ood_dir.iterdir())
        if folder.is_dir()
    }
    return {kind: files for kind, files in found.items() if files}


def evaluate_gate(gate: Gate, runtime: Any, frontal: list[Path], kinds: dict[str, list[Path]]) -> dict:
    """The gate's figures: frontal films refused, and each kind's inputs caught and named."""
    pooled, notes = pooled_of_files(runtime, frontal)
    verdicts = [gate.judge(p, n) for p, n in zip(pooled, notes, strict=True)]
    refused = sum(not v.passed for v in verdicts)
    result: dict[str, Any] = {
        "threshold": gate.threshold,
        "frontal": {"n": len(frontal), "refused": refused, "rate": refused / max(len(frontal), 1)},
        "kinds": {},
        "scores": {"frontal": [v.score for v in verdicts]},
    }
    for kind, files in kinds.items():
        pooled, notes = pooled_of_files(runtime, files)
        verdicts = [gate.judge(p, n) for p, n in zip(pooled, notes, strict=True)]
        caught = sum(not v.passed for v in verdicts)
        named = sum(v.looks_like == kind for v in verdicts if not v.passed)
        result["kinds"][kind] = {
            "n": len(files),
            "caught": caught,
            "rate": caught / len(files),
            "named": named,
        }
        result["scores"][kind] = [v.score for v in verdicts]
    return result


def histogram_png(result: dict, path: Path) -> Path:
    """Draw the score histogram of the frontal films and of each kind, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    scores = result["scores"]
    top = max(max(v, default=0.0) for v in scores.values())
    bins = np.linspace(0.0, max(top, result["threshold"]) * 1.05, 50).tolist()
    for name, values in scores.items():
        ax.hist(values, bins=bins, alpha=0.55, density=True, label=f"{name} (n={len(values)})")
    ax.axvline(result["threshold"], color="black", linestyle="--", label="threshold")
    ax.set_xlabel("OOD score (Mahalanobis distance per dimension)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_gate(model_path: Path, data_dir: Path, ood_dir: Path | None = None) -> dict:
    """Fit the gate of the model at `model_path` on `data_dir/train` and its threshold on `data_dir/val`;
    write FILE.ood.npz and record it in FILE.json (threshold, false refusals on val); return the entry.

    `ood_dir/<kind>/` examples, if given, only teach the gate to name what a refused input looks like.
    """
    from covidxray.ml.datasets import list_images
    from covidxray.predictors.runtime import load_runtime

    runtime = load_runtime(model_path)  # the twin that serves: the gate judges its features
    train_files, train_labels = list_images(data_dir / "train")
    val_files, _ = list_images(data_dir / "val")
    train, _ = pooled_of_files(runtime, train_files)
    val, val_notes = pooled_of_files(runtime, val_files)
    named = {kind: files for kind, files in kind_folders(ood_dir).items() if kind in KIND_WORDS}
    kinds = {kind: pooled_of_files(runtime, files)[0] for kind, files in named.items()}
    gate = fit(train, train_labels, val, kinds=kinds)
    path = model_path.with_suffix(".ood.npz")
    gate.save(path)
    refused = [not gate.judge(p, n).passed for p, n in zip(val, val_notes, strict=True)]
    entry = {
        "file": path.name,
        "method": "class-conditional Mahalanobis distance of the pooled features, Ledoit-Wolf covariance",
        "threshold": gate.threshold,
        "val_false_refusals": float(np.mean(refused)),
        "kinds": list(gate.kind_names),
        "fitted_on": runtime.name,
    }
    meta_path = model_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "ood": entry}, indent=2) + "\n")
    return entry
