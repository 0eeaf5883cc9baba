"""The gate in front of the classifier: is this a frontal chest radiograph at all?

The score is the class-conditional Mahalanobis distance (Lee et al. 2018) of the image's pooled
features, the ones the classifier's own forward pass already makes, to the training films of each
class, under one shared, shrunk covariance: higher is less like a frontal film. The threshold is
fitted on val frontal films and travels with the model (FILE.ood.npz, named in the metadata). The
gate can also say what the input looks like: a colour photograph (from the decoder), or the known
kind (CT slice, lateral view) whose mean lies nearer than any frontal class's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.imaging.prepare import PHOTO_NOTE, Prepared, to_tensor

#: What each known kind of non-frontal input is called in messages.
KIND_WORDS = {"ct": "a CT slice", "lateral": "a lateral chest view", "photo": "a colour photograph"}


@dataclass
class Verdict:
    """The gate's answer for one image."""

    score: float
    threshold: float
    passed: bool
    looks_like: str | None = None  # a key of KIND_WORDS, when the gate can tell

    def message(self) -> str:
        """What a clinician reads when the gate stops the image."""
        seen = f"looks like {KIND_WORDS[self.looks_like]}" if self.looks_like else "does not look like one"
        return (
            f"This image is not a frontal chest radiograph (it {seen}); "
            "send a frontal (PA or AP) chest X-ray instead."
        )


@dataclass
class Gate:
    """Class means and shared precision of the training films' pooled features, and the threshold."""

    means: np.ndarray  # (classes, d)
    precision: np.ndarray  # (d, d)
    threshold: float
    kind_names: tuple[str, ...] = ()
    kind_means: np.ndarray | None = None  # (kinds, d)

    def distances(self, pooled: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `pooled` (n, d) to each centre (k, d): (n, k)."""
        diff = pooled[:, None, :].astype(np.float32) - centres[None, :, :]
        squared = ((diff @ self.precision) * diff).sum(axis=-1)
        return np.sqrt(np.maximum(squared, 0.0) / pooled.shape[1])

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """The OOD score of each image: its distance to the nearest class of frontal films."""
        return self.distances(pooled, self.means).min(axis=1)

    def judge(self, pooled: np.ndarray, notes: list[str] = ()) -> Verdict:  # type: ignore[assignment]
        """The verdict on one image's pooled features (d,), given the decoder's notes."""
        near_frontal = self.distances(pooled[None], self.means)[0]
        score = float(near_frontal.min())
        looks_like = "photo" if PHOTO_NOTE in notes else None
        if looks_like is None and self.kind_means is not None and len(self.kind_names):
            near_kind = self.distances(pooled[None], self.kind_means)[0]
            if near_kind.min() < score:
                looks_like = self.kind_names[int(near_kind.argmin())]
        passed = score <= self.threshold and looks_like != "photo"
        return Verdict(score, self.threshold, passed, None if passed else looks_like)

    def save(self, path: Path) -> None:
        kinds = self.kind_means if self.kind_means is not None else np.zeros((0, self.means.shape[1]))
        np.savez_compressed(
            path,
            means=self.means.astype(np.float32),
            precision=self.precision.astype(np.float32),
            threshold=np.float64(self.threshold),
            kind_names=np.asarray(self.kind_names, dtype=str),
            kind_means=kinds.astype(np.float32),
        )

    @classmethod
    def load(cls, path: Path) -> Gate:
        with np.load(path, allow_pickle=False) as npz:
            names = tuple(str(n) for n in npz["kind_names"])
            return cls(
                means=npz["means"],
                precision=npz["precision"],
                threshold=float(npz["threshold"]),
                kind_names=names,
                kind_means=npz["kind_means"] if names else None,
            )


class Guard:
    """The gate as the service uses it: its mode, and (for backends whose forward pass yields no features,
    such as AutoML) a runtime of our own model to compute them."""

    def __init__(self, gate: Gate, mode: str, runtime: Any = None):
        self.gate, self.mode, self.runtime = gate, mode, runtime

    @property
    def needs_features(self) -> bool:
        """True when the gate must run our model itself, before the backend is asked."""
        return self.runtime is not None

    def check(self, prepared: Prepared, pooled: np.ndarray | None = None) -> Verdict:
        """Judge one prepared image, from the classifier's pooled features when given (else our model runs
        on it, at its own input size)."""
        if pooled is None:
            size = self.runtime.info.input_size
            tensor = prepared.tensor if prepared.tensor.shape[0] == size else to_tensor(prepared.image, size)
            _, features = self.runtime.run(tensor[None])
            pooled = features[0].mean(axis=(0, 1))
        return self.gate.judge(np.asarray(pooled, np.float32), prepared.warnings)


def gate_path(model_path: Path) -> Path | None:
    """The gate file that the model's metadata names, if any."""
    meta = json.loads(model_path.with_suffix(".json").read_text())
    entry = meta.get("ood")
    return model_path.parent / entry["file"] if entry else None


def open_guard(mode: str, model_path: Path, runtime: Any = None) -> Guard | None:
    """The guard for `mode` over the model at `model_path` (None when off).

    `runtime` runs the model for backends that do not; pass None when the predictor gives the features.
    """
    if mode == "off":
        return None
    path = gate_path(model_path)
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"the model at {model_path} has no OOD gate; retrain it, or set COVIDXRAY_OOD=off"
        )
    return Guard(Gate.load(path), mode, runtime)


def pooled_of_files(runtime: Any, files: list[Path]) -> tuple[np.ndarray, list[list[str]]]:
    """The pooled features of each file as the service computes them, and the decoder's notes."""
    from covidxray.predictors.runtime import prepared_batches

    pooled, notes = [], []
    for _, prepared, _, features in prepared_batches(runtime, files):
        pooled.append(features.mean(axis=(1, 2)))
        notes += [p.warnings for p in prepared]
    return np.concatenate(pooled), notes
