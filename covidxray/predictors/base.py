"""The predictor interface: what the service asks of a backend (`Predictor`)
and its answer (`Outcome`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidxray.imaging.prepare import Prepared


@dataclass
class Outcome:
    """Class probabilities for one image, in LABELS order, plus notes."""

    probabilities: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    heatmap: np.ndarray | None = None  # class activation map of the top class, (h, w), when asked
    gate_input: np.ndarray | None = None  # the last feature maps as the OOD gate reads them (gate.summarize)


class Predictor(ABC):
    """Turns a prepared image into class probabilities; `load()` once per process."""

    backend: str = ""
    model_name: str = ""
    model_version: str = ""
    input_size: int = 224
    gives_features: bool = False  # whether `predict` fills Outcome.gate_input (else the gate runs our model)

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
