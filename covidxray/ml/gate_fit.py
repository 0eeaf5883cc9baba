"""Fitting and measuring the gate for non-frontal inputs (training side: scikit-learn, matplotlib).

The served side, `covidxray.predictors.gate`, only loads a fitted gate and judges with numpy.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.predictors.gate import (
    GRID,
    KIND_WORDS,
    Gate,
    LayoutHead,
    summaries_of_files,
    summaries_with_mirrors,
)

#: inverse regularisation strength of the layout head's logistic regression
HEAD_C = 0.01


def fit(
    train: np.ndarray,
    labels: np.ndarray,
    val: np.ndarray,
    max_false_refusals: float = 0.01,
    kinds: dict[str, np.ndarray] | None = None,
    mirrors: dict[str, np.ndarray] | None = None,
    groups: list[str] | None = None,
) -> Gate:
    """Fit the gate on training films' summaries (n, (1 + GRID²) c, from `summarize`) and their labels.

    The density test's threshold lets through all but half of `max_false_refusals` of the films it did
    not learn from: the val films and, when `groups` gives each training film's patient, the training
    films scored out of fold (a few hundred val films put a 0.5 % quantile at their second-highest
    value, and the distances of wide feature maps crowd just below it). The layout head, fitted when
    `kinds` maps known kinds of non-frontal input to examples of their summaries, gets the largest
    decision of the val films that pass the density test as its threshold: it refuses none of them (its
    training films cannot tell its held-out tail, and below the largest of a few hundred val films a
    quantile is the noise of one film). `mirrors` maps "train" and each kind to the summaries of the
    same images flipped left-right, which the head learns from too. The means of the kinds that have
    words (KIND_WORDS) name what a refused input looks like.
    """
    return with_head(fit_density(train, labels, val, max_false_refusals, groups), train, val, kinds, mirrors)


def fit_density(
    train: np.ndarray,
    labels: np.ndarray,
    val: np.ndarray,
    max_false_refusals: float = 0.01,
    groups: list[str] | None = None,
) -> Gate:
    """The gate with its density test alone, its threshold as `fit` sets it."""
    pooled = train[:, : _channels(train)]
    gate = _density_gate(pooled, labels)
    held_out = [gate.density(val)]
    if groups is not None:
        held_out.append(out_of_fold_density(pooled, labels, groups))
    gate.threshold = float(np.quantile(np.concatenate(held_out), 1.0 - max_false_refusals / 2))
    return gate


def with_head(
    gate: Gate,
    train: np.ndarray,
    val: np.ndarray,
    kinds: dict[str, np.ndarray] | None = None,
    mirrors: dict[str, np.ndarray] | None = None,
) -> Gate:
    """A copy of the density-only `gate` with the kinds' names and, when `kinds` are given, the layout
    head and its threshold, as `fit` sets them."""
    channels = _channels(train)
    named = {kind: v for kind, v in (kinds or {}).items() if kind in KIND_WORDS}
    gate = replace(gate)
    if named:
        gate.kind_names = tuple(named)
        gate.kind_means = np.stack([np.asarray(v)[:, :channels].mean(axis=0) for v in named.values()])
    if kinds:
        mirrors = mirrors or {}
        frontal = [train, *([mirrors["train"]] if "train" in mirrors else [])]
        others = [*kinds.values(), *(mirrors[k] for k in kinds if k in mirrors)]
        head = fit_head(np.concatenate(frontal)[:, channels:], np.concatenate(others)[:, channels:])
        passed = val[gate.density(val) <= gate.threshold]
        head.threshold = float(head.decisions(passed[:, channels:]).max())
        gate.head = head
    return gate


def _density_gate(pooled: np.ndarray, labels: np.ndarray) -> Gate:
    """A gate with the density test alone (no threshold yet): class means and the Ledoit-Wolf precision
    of the pooled features `pooled` (n, c) around them."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(labels)
    means = np.stack([pooled[labels == c].mean(axis=0) for c in classes])
    centred = pooled - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return Gate(means.astype(np.float32), precision.astype(np.float32), threshold=np.inf)


def out_of_fold_density(
    pooled: np.ndarray, labels: np.ndarray, groups: list[str], folds: int = 5
) -> np.ndarray:
    """The density test's value of each training film by a gate fitted on the other patients' films
    (`folds` patient-grouped folds; `groups`: one patient key per film)."""
    from sklearn.model_selection import GroupKFold

    values = np.zeros(len(pooled))
    for seen, unseen in GroupKFold(min(folds, len(set(groups)))).split(pooled, groups=groups):
        values[unseen] = _density_gate(pooled[seen], labels[seen]).density(pooled[unseen])
    return values


def _channels(summaries: np.ndarray) -> int:
    """The channel count c of summaries with (1 + GRID²) c columns."""
    return summaries.shape[1] // (1 + GRID * GRID)


def fit_head(frontal: np.ndarray, others: np.ndarray) -> LayoutHead:
    """A logistic regression of frontal films' region means against the others' (each side weighing the
    same), standardised, with the standardisation folded into its weights; its threshold is set later."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([frontal, others]).astype(np.float64)
    y = np.r_[np.zeros(len(frontal)), np.ones(len(others))]
    weight = np.r_[np.full(len(frontal), 0.5 / len(frontal)), np.full(len(others), 0.5 / len(others))]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=HEAD_C, max_iter=5000)
    model.fit((x - mean) / scale, y, sample_weight=weight * len(x))
    weights = model.coef_[0] / scale
    bias = float(model.intercept_[0] - weights @ mean)
    return LayoutHead(weights.astype(np.float32), bias, threshold=0.0)


def cross_validate(
    train: np.ndarray,
    labels: np.ndarray,
    val: np.ndarray,
    kinds: dict[str, np.ndarray],
    groups: dict[str, list[str]],
    folds: int = 4,
    mirrors: dict[str, np.ndarray] | None = None,
    density: Gate | None = None,
) -> dict[str, Any]:
    """Each known kind's inputs caught by a gate whose head never saw their patient (`groups`: one patient
    key per example), in `folds` patient-grouped folds; and the val films each fold's gate refused.
    `mirrors` as for `fit` (a held-out patient's flipped images are held out too); `density`: the gate's
    density test as `fit_density` fitted it (the same in every fold; default: fitted here on val)."""
    from sklearn.model_selection import GroupKFold

    names = list(kinds)
    mirrors = mirrors or {}
    every = np.concatenate([kinds[k] for k in names])
    flipped = np.concatenate([mirrors[k] for k in names]) if all(k in mirrors for k in names) else None
    kind_of = np.concatenate([[k] * len(kinds[k]) for k in names])
    patients = np.concatenate([groups[k] for k in names])
    caught = dict.fromkeys(names, 0)
    val_refused = []
    density = density or fit_density(train, labels, val)
    splits = GroupKFold(min(folds, len(set(patients)))).split(every, groups=patients)
    for seen, unseen in splits:
        held = {k: every[seen][kind_of[seen] == k] for k in names if (kind_of[seen] == k).any()}
        held_mirrors = {k: flipped[seen][kind_of[seen] == k] for k in held} if flipped is not None else {}
        if "train" in mirrors:
            held_mirrors["train"] = mirrors["train"]
        gate = with_head(density, train, val, kinds=held, mirrors=held_mirrors)
        verdicts = gate.scores(every[unseen]) > gate.cut
        for k in names:
            caught[k] += int(verdicts[kind_of[unseen] == k].sum())
        val_refused.append(int((gate.scores(val) > gate.cut).sum()))
    return {
        "folds": folds,
        "kinds": {
            k: {"n": len(kinds[k]), "caught": caught[k], "rate": caught[k] / len(kinds[k])} for k in names
        },
        "val_refused_per_fold": val_refused,
    }


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
    summaries, notes = summaries_of_files(runtime, frontal)
    verdicts = [gate.judge(s, n) for s, n in zip(summaries, notes, strict=True)]
    refused = sum(not v.passed for v in verdicts)
    result: dict[str, Any] = {
        "threshold": gate.cut,
        "frontal": {"n": len(frontal), "refused": refused, "rate": refused / max(len(frontal), 1)},
        "kinds": {},
        "scores": {"frontal": [v.score for v in verdicts]},
    }
    for kind, files in kinds.items():
        summaries, notes = summaries_of_files(runtime, files)
        verdicts = [gate.judge(s, n) for s, n in zip(summaries, notes, strict=True)]
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
    ax.set_xlabel("OOD score (the larger of the two tests' values over their thresholds)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def patients_of(ood_dir: Path, files: list[Path]) -> list[str]:
    """One patient key per file: `patient_id` from `ood_dir/manifest.csv` (columns file, patient_id) when it
    lists the file, else the file's own name (each file its own patient)."""
    import csv

    manifest = ood_dir / "manifest.csv"
    known: dict[str, str] = {}
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        known = {row["file"]: row["patient_id"] for row in rows if row.get("patient_id")}
    return [known.get(f"{path.parent.name}/{path.name}", path.name) for path in files]


def patients_of_films(data_dir: Path, files: list[Path]) -> list[str]:
    """One patient key per film: `patient_id` from the data set's `manifest.csv` where it lists the film,
    else the film's own path (each film its own patient)."""
    from covidxray.ml.evaluation import find_manifest, read_manifest

    manifest = find_manifest(data_dir)
    rows = read_manifest(manifest) if manifest else {}
    return [rows.get(path.resolve(), {}).get("patient_id") or str(path) for path in files]


def _read(runtime: Any, files: list[Path], flip: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The gate's input for each file and, with `flip`, for each image flipped left-right (else None)."""
    if flip:
        return summaries_with_mirrors(runtime, files)
    return summaries_of_files(runtime, files)[0], None


def build_gate(model_path: Path, data_dir: Path, ood_dir: Path | None = None, flips: bool = False) -> dict:
    """Fit the gate of the model at `model_path` on `data_dir/train`, its thresholds on `data_dir/val`
    and its layout head on `ood_dir/<kind>/` (if given; with `flips`, on every image flipped left-right
    too); write FILE.ood.npz and record it in FILE.json (thresholds, false refusals on val, the head's
    patient-grouped cross-validation); return the entry.
    """
    from covidxray.ml.datasets import list_images
    from covidxray.predictors.runtime import load_runtime

    runtime = load_runtime(model_path)  # the twin that serves: the gate judges its features
    train_files, train_labels = list_images(data_dir / "train")
    val_files, _ = list_images(data_dir / "val")
    val, val_notes = summaries_of_files(runtime, val_files)
    folders = kind_folders(ood_dir)
    flip = flips and bool(folders)  # only the layout head, trained on the kinds, learns from flipped films
    train, train_flipped = _read(runtime, train_files, flip)
    read = {kind: _read(runtime, files, flip) for kind, files in folders.items()}
    kinds = {kind: plain for kind, (plain, _) in read.items()}
    mirrors = {kind: flipped for kind, (_, flipped) in read.items() if flipped is not None}
    if train_flipped is not None:
        mirrors["train"] = train_flipped
    density = fit_density(train, train_labels, val, groups=patients_of_films(data_dir, train_files))
    gate = with_head(density, train, val, kinds=kinds, mirrors=mirrors)
    path = model_path.with_suffix(".ood.npz")
    gate.save(path)
    refused = [not gate.judge(s, n).passed for s, n in zip(val, val_notes, strict=True)]
    entry: dict[str, Any] = {
        "file": path.name,
        "method": (
            "the larger of two tests, each over its threshold: the class-conditional Mahalanobis distance of"
            " the pooled features (Ledoit-Wolf covariance; its threshold from the val films and the training"
            " films scored out of fold, by patient), and a logistic head on the feature maps' means"
            f" over a {GRID} x {GRID} grid trained against the known kinds"
            + (" (images also flipped left-right)" if flip else "")
        ),
        "threshold": gate.cut,
        "density_threshold": gate.threshold,
        "layout_threshold": gate.head.threshold if gate.head else None,
        "val_false_refusals": float(np.mean(refused)),
        "kinds": list(gate.kind_names),
        "trained_on": {kind: len(files) for kind, files in folders.items()},
        "fitted_on": "onnx-float" if runtime.name == "onnx" else runtime.name,  # the twin's key in `twins`
    }
    if ood_dir is not None and kinds:
        groups = {kind: patients_of(ood_dir, files) for kind, files in folders.items()}
        entry["cross_validated"] = cross_validate(
            train, train_labels, val, kinds, groups, mirrors=mirrors, density=density
        )
    meta_path = model_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "ood": entry}, indent=2) + "\n")
    return entry
