"""The gate in front of the classifier: is this a frontal chest radiograph at all?

The score is the class-conditional Mahalanobis distance (Lee et al. 2018) of the image's pooled
features, the ones the classifier's own forward pass already makes, to the training films of each
class, under one shared, shrunk covariance: higher is less like a frontal film. The threshold is
fitted on val frontal films and travels with the model (FILE.ood.npz, named in the metadata). The
gate can also say what the input looks like: a colour photograph (from the decoder), or the known
kind (CT slice, lateral view) whose mean lies nearer than any frontal class's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODES = ("refuse", "warn", "off")
#: What each known kind of non-frontal input is called in messages.
KIND_WORDS = {"ct": "a CT slice", "lateral": "a lateral chest view", "photo": "a colour photograph"}
PHOTO_NOTE = "looks like a colour photograph, not a radiograph"


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
        squared = np.einsum("nkd,de,nke->nk", diff, self.precision, diff, optimize=True)
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
