"""Predictors: the one part that differs between the twin services."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .heatmap import class_activation_map
from .imaging import Prepared
from .labels import LABELS
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Class probabilities for one image, in LABELS order, plus notes."""

    probabilities: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    heatmap: np.ndarray | None = None  # class activation map of the top class, (h, w), when asked
    pooled: np.ndarray | None = None  # the pooled last feature maps (c,), for the OOD gate


class Predictor(ABC):
    """Turns a prepared image into class probabilities; `load()` once per process."""

    backend: str = ""
    model_name: str = ""
    model_version: str = ""
    input_size: int = 224
    gives_features: bool = False  # whether `predict` fills Outcome.pooled (else the gate runs our model)

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True once the predictor can answer (the readiness rule)."""

    @abstractmethod
    def load(self) -> None:
        """Load the model or open the client; called once at start."""

    @abstractmethod
    def predict(self, image: Prepared, data: bytes, explain: bool = False) -> Outcome:
        """Probabilities for one image (`data` is the uploaded bytes); a heatmap too when `explain`."""

    def status(self) -> dict[str, Any]:
        """State for `/readyz`'s body."""
        return {
            "backend": self.backend,
            "ready": self.ready,
            "model": self.model_name,
            "version": self.model_version,
        }


class KerasPredictor(Predictor):
    """Our trained CNN, run by its exported twin (onnxruntime) or by Keras itself."""

    backend = "keras"
    gives_features = True

    def __init__(self, model_path: Path | None = None, runtime: str | None = None, threads: int = 1):
        self.model_path = model_path
        self.runtime_name = runtime
        self.threads = threads
        self._runtime: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> KerasPredictor:
        """Build from COVIDXRAY_MODEL, COVIDXRAY_RUNTIME and COVIDXRAY_RUNTIME_THREADS."""
        return cls(settings.model, settings.runtime, settings.runtime_threads)

    @property
    def ready(self) -> bool:
        return self._runtime is not None

    def load(self) -> None:
        from .runtime import DEFAULT_MODEL, load_runtime

        with self._lock:
            if self._runtime is not None:
                return
            path = self.model_path or DEFAULT_MODEL
            runtime = load_runtime(path, self.runtime_name, threads=self.threads)
            info = runtime.info
            if tuple(info.labels) != LABELS:
                raise RuntimeError(f"{path} has labels {info.labels}, expected {LABELS}")
            self.model_name, self.model_version, self.input_size = info.name, info.version, info.input_size
            self._runtime = runtime
            log.info(
                "model loaded", extra={"model": info.name, "version": info.version, "runtime": runtime.name}
            )

    def logits(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits and last feature maps for a batch of prepared tensors."""
        return self._runtime.run(batch)  # type: ignore[no-any-return]

    def predict(self, image: Prepared, data: bytes, explain: bool = False) -> Outcome:
        from .calibration import softmax

        logits, features = self.logits(image.tensor[None])
        probs = softmax(logits, self._runtime.info.temperature)[0]
        outcome = Outcome(
            probabilities={label: float(p) for label, p in zip(LABELS, probs, strict=True)},
            pooled=features[0].mean(axis=(0, 1)),
        )
        if explain:
            kernel, _ = self._runtime.output_weights
            outcome.heatmap = class_activation_map(features[0], kernel, int(np.argmax(probs)))
        return outcome

    def status(self) -> dict[str, Any]:
        state = super().status()
        state["runtime"] = self._runtime.name if self._runtime is not None else None
        return state


def _automl(settings: Settings) -> Predictor:
    from .automl import AutoMLPredictor  # Google's client libraries load only for this backend

    return AutoMLPredictor.from_settings(settings)


PREDICTORS = {"keras": KerasPredictor.from_settings, "automl": _automl}


def make_predictor(backend: str, settings: Settings) -> Predictor:
    """Build the predictor for `backend` (one of PREDICTORS)."""
    try:
        factory = PREDICTORS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(PREDICTORS)}") from None
    return factory(settings)
