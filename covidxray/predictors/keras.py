"""Our trained CNN as a predictor, run by its exported twin (onnxruntime) or by Keras."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.imaging.heatmap import class_activation_map
from covidxray.imaging.prepare import Prepared
from covidxray.labels import LABELS
from covidxray.predictors.base import Outcome, Predictor
from covidxray.predictors.gate import summarize
from covidxray.settings import Settings

log = logging.getLogger(__name__)


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
        from covidxray.predictors.runtime import DEFAULT_MODEL, load_runtime

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
        from covidxray.predictors.calibration import softmax

        logits, features = self.logits(image.tensor[None])
        probs = softmax(logits, self._runtime.info.temperature)[0]
        outcome = Outcome(
            probabilities={label: float(p) for label, p in zip(LABELS, probs, strict=True)},
            gate_input=summarize(features[0]),
        )
        if explain:
            kernel, _ = self._runtime.output_weights
            outcome.heatmap = class_activation_map(features[0], kernel, int(np.argmax(probs)))
        return outcome

    def status(self) -> dict[str, Any]:
        state = super().status()
        state["runtime"] = self._runtime.name if self._runtime is not None else None
        return state
