"""The gate in front of the classifier: is this a frontal chest radiograph at all?

It judges the last feature maps that the classifier's own forward pass already makes, by two tests:

- a density test: the class-conditional Mahalanobis distance (Lee et al. 2018) of the maps' global
  mean to the training films of each class, under one shared, shrunk covariance. It knows only
  frontal films, so it catches whatever lies far from them (photographs, pages, noise, other parts);
- a layout test: a logistic head on the maps' means over a GRID × GRID grid of regions, trained
  against known kinds of non-frontal input (CT slices, lateral films), each also flipped left-right,
  as are the frontal films. Global pooling forgets where things are; a lateral film has the anatomy
  of a chest in the wrong places.

Each test has a threshold fitted on val frontal films; the score is the larger of the two, each
divided by its threshold, so the gate refuses above 1 (higher = less like a frontal film). The
thresholds travel with the model (FILE.ood.npz, named in the metadata). The gate can also say what
the input looks like: a colour photograph (from the decoder), or the known kind whose mean lies
nearer than any frontal class's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from covidxray.imaging.prepare import PHOTO_NOTE, Prepared, to_tensor

#: What each known kind of non-frontal input is called in messages.
KIND_WORDS = {"ct": "a CT slice", "lateral": "a lateral chest view", "photo": "a colour photograph"}

#: The layout test pools the feature maps over GRID × GRID regions.
GRID = 4


def summarize(maps: np.ndarray) -> np.ndarray:
    """The gate's input from one image's last feature maps (h, w, c): their global mean (c values), then
    their mean over each of GRID × GRID regions, row by row (GRID² c values)."""
    rows = np.array_split(np.arange(maps.shape[0]), GRID)
    cols = np.array_split(np.arange(maps.shape[1]), GRID)
    regions = [maps[r][:, c].mean(axis=(0, 1)) for r in rows for c in cols]
    return np.concatenate([maps.mean(axis=(0, 1)), *regions]).astype(np.float32)


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
class LayoutHead:
    """A logistic head on the region means: weights (GRID² c,), bias, the decision value it refuses above."""

    weights: np.ndarray
    bias: float
    threshold: float

    def decisions(self, regions: np.ndarray) -> np.ndarray:
        """The head's decision value (log-odds of non-frontal) of each row of `regions` (n, GRID² c)."""
        return regions.astype(np.float32) @ self.weights + self.bias

    def ratios(self, regions: np.ndarray) -> np.ndarray:
        """The head's probability of non-frontal over its probability at the threshold: refuses above 1."""
        return _sigmoid(self.decisions(regions)) / _sigmoid(np.asarray(self.threshold))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


@dataclass
class Gate:
    """Class means and shared precision of the training films' pooled features with the density test's
    threshold, the layout head (if fitted), and the known kinds' means for naming."""

    means: np.ndarray  # (classes, c)
    precision: np.ndarray  # (c, c)
    threshold: float  # of the Mahalanobis distance per dimension
    kind_names: tuple[str, ...] = ()
    kind_means: np.ndarray | None = None  # (kinds, c)
    head: LayoutHead | None = None

    #: the score above which an image is refused (each test's value is divided by its own threshold)
    cut: ClassVar[float] = 1.0

    def distances(self, pooled: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `pooled` (n, c) to each centre (k, c): (n, k)."""
        diff = pooled[:, None, :].astype(np.float32) - centres[None, :, :]
        squared = ((diff @ self.precision) * diff).sum(axis=-1)
        return np.sqrt(np.maximum(squared, 0.0) / pooled.shape[1])

    def split(self, summaries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pooled features and the region means of each row of `summaries` (n, (1 + GRID²) c)."""
        channels = self.means.shape[1]
        return summaries[:, :channels], summaries[:, channels:]

    def density(self, summaries: np.ndarray) -> np.ndarray:
        """The density test's value of each image: its distance to the nearest class of frontal films."""
        pooled, _ = self.split(summaries)
        return self.distances(pooled, self.means).min(axis=1)

    def scores(self, summaries: np.ndarray, density: np.ndarray | None = None) -> np.ndarray:
        """The OOD score of each image (rows of `summarize`): the larger of the two tests' values, each
        over its threshold (`density`: the density test's values, when already computed)."""
        score = (self.density(summaries) if density is None else density) / self.threshold
        if self.head is not None:
            score = np.maximum(score, self.head.ratios(self.split(summaries)[1]))
        return score

    def judge(self, summary: np.ndarray, notes: list[str] = ()) -> Verdict:  # type: ignore[assignment]
        """The verdict on one image's summary (the output of `summarize`), given the decoder's notes."""
        pooled = self.split(summary[None])[0]
        near_frontal = float(self.distances(pooled, self.means)[0].min())
        score = float(self.scores(summary[None], np.array([near_frontal]))[0])
        looks_like = "photo" if PHOTO_NOTE in notes else None
        if looks_like is None and self.kind_means is not None and len(self.kind_names):
            near_kind = self.distances(pooled, self.kind_means)[0]
            if near_kind.min() < near_frontal:
                looks_like = self.kind_names[int(near_kind.argmin())]
        passed = score <= self.cut and looks_like != "photo"
        return Verdict(score, self.cut, passed, None if passed else looks_like)

    def save(self, path: Path) -> None:
        kinds = self.kind_means if self.kind_means is not None else np.zeros((0, self.means.shape[1]))
        head = self.head or LayoutHead(np.zeros(0, np.float32), 0.0, 0.0)
        np.savez_compressed(
            path,
            means=self.means.astype(np.float32),
            precision=self.precision.astype(np.float32),
            threshold=np.float64(self.threshold),
            kind_names=np.asarray(self.kind_names, dtype=str),
            kind_means=kinds.astype(np.float32),
            head_weights=head.weights.astype(np.float32),
            head_bias=np.float64(head.bias),
            head_threshold=np.float64(head.threshold),
        )

    @classmethod
    def load(cls, path: Path) -> Gate:
        with np.load(path, allow_pickle=False) as npz:
            names = tuple(str(n) for n in npz["kind_names"])
            weights = npz["head_weights"] if "head_weights" in npz.files else np.zeros(0, np.float32)
            if weights.size and weights.size != GRID * GRID * npz["means"].shape[1]:
                raise ValueError(f"{path} was fitted on a grid other than {GRID} x {GRID}: refit it")
            head = (
                LayoutHead(weights, float(npz["head_bias"]), float(npz["head_threshold"]))
                if weights.size
                else None
            )
            return cls(
                means=npz["means"],
                precision=npz["precision"],
                threshold=float(npz["threshold"]),
                kind_names=names,
                kind_means=npz["kind_means"] if names else None,
                head=head,
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

    def check(self, prepared: Prepared, summary: np.ndarray | None = None) -> Verdict:
        """Judge one prepared image, from the `summarize`d feature maps of the classifier's forward pass
        when given (else our model runs on it, at its own input size)."""
        if summary is None:
            size = self.runtime.info.input_size
            tensor = prepared.tensor if prepared.tensor.shape[0] == size else to_tensor(prepared.image, size)
            _, features = self.runtime.run(tensor[None])
            summary = summarize(features[0])
        return self.gate.judge(np.asarray(summary, np.float32), prepared.warnings)

    def check_maps(self, prepared: Prepared, maps: np.ndarray) -> Verdict:
        """Judge one prepared image from the last feature maps (h, w, c) of the classifier's forward pass."""
        return self.check(prepared, summarize(maps))


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


def summaries_of_files(runtime: Any, files: list[Path]) -> tuple[np.ndarray, list[list[str]]]:
    """The gate's input (`summarize`) for each file as the service computes it, and the decoder's notes."""
    summaries, _, notes = _summaries(runtime, files, mirrors=False)
    return summaries, notes


def summaries_with_mirrors(runtime: Any, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The gate's input for each file, and for each prepared image flipped left-right (one decode)."""
    summaries, mirrored, _ = _summaries(runtime, files, mirrors=True)
    return summaries, mirrored


def _summaries(
    runtime: Any, files: list[Path], mirrors: bool
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    from covidxray.predictors.runtime import prepared_batches

    summaries, mirrored, notes = [], [], []
    for _, prepared, _, features in prepared_batches(runtime, files):
        summaries += [summarize(maps) for maps in features]
        notes += [p.warnings for p in prepared]
        if mirrors:
            _, flipped = runtime.run(np.stack([p.tensor[:, ::-1] for p in prepared]))
            mirrored += [summarize(maps) for maps in flipped]
    return np.stack(summaries), np.stack(mirrored) if mirrors else np.zeros((0,)), notes
